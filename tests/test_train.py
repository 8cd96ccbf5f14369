"""Training loop: resume identity, global-token normalisation, data parallel, stages, errors."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import DropsACtrlC, write_jsonl
from rcond import hub
from rcond.corpus import CorpusError, PackOptions, build, train_tokenizer
from rcond.sources import SourceReader
from rcond.train import Stage, TrainConfig, TrainError, load_config_file, lr_lambda, train

ROOT = Path(__file__).resolve().parents[1]
WORDS = "good bad fine great awful nice poor okay superb dull".split()


def make_corpus(tmp, name, n=120, seed=0, tokenizer=None, block_size=48, num_bins=4, binning="quantile"):
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 14))]
        rows.append({"prompt": "review:", "response": " ".join(words),
                     "reward": sum(w in ("good", "great", "nice", "superb") for w in words) / len(words)})
    src = write_jsonl(tmp / f"{name}.jsonl", rows)
    reader = SourceReader([str(src)], "scored")
    tok = tokenizer or train_tokenizer(reader.texts(), 300)
    build(reader, tmp / name, tok, num_bins=num_bins, binning=binning,
          opts=PackOptions(block_size=block_size, uncond_fraction=0.1), progress=False)
    return tmp / name, tok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), "c")[0]


def cfg_for(corpus, steps=8, **kw):
    base = dict(model="tiny", batch_size=4, warmup=min(2, steps), lr=3e-3, seed=0, device="cpu")
    base.update(kw)
    return TrainConfig(stages=[Stage(corpora=[str(corpus)], steps=steps, name="s")], **base)


def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(tmp_path, corpus):
    from rcond.train import check_device

    for spec in ("cpu", "auto"):
        check_device(spec)
    with pytest.raises(TrainError, match="'banana': not a device; use auto, cpu or cuda"):
        check_device("banana")
    with pytest.raises(TrainError, match="'meta': rcond trains on cpu or cuda"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="--device cuda:0: CUDA is not available here; use --device cpu"):
            train(cfg_for(corpus, steps=1, device="cuda:0"), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def test_a_cuda_index_beyond_the_machines_devices_is_refused_and_auto_picks_cuda(monkeypatch):
    """On a machine with 2 CUDA devices (faked: the check only asks torch how many there are),
    cuda:1 is the last one, cuda:2 is refused naming the count, and auto trains on cuda."""
    from rcond.train import Dist, check_device, init_distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_device("cuda:1")
    with pytest.raises(TrainError, match=r"^--device cuda:2: this machine has 2 CUDA device\(s\)$"):
        check_device("cuda:2")
    assert init_distributed("auto") == (Dist(), torch.device("cuda"))
    assert init_distributed("cuda:1") == (Dist(), torch.device("cuda:1"))
    assert init_distributed("cpu") == (Dist(), torch.device("cpu"))


@pytest.mark.parametrize("setting,value,what", [
    ("lr", -1.0, "a positive number"), ("lr", float("nan"), "a positive number"),
    ("batch_size", 0, "an integer of at least 1"), ("grad_accum", 1.5, "an integer of at least 1"),
    ("seed", -1, "an integer in [0, 2**63 - 1]"), ("seed", 2**63, "an integer in [0, 2**63 - 1]"),
    ("warmup", "10", "a non-negative integer"), ("lr", 10**400, "a positive number"),
    ("model", 5, "a string"), ("trust_remote_code", "yes", "true or false"), ("trust_remote_code", 1, "true or false"),
    ("save_every", True, "a non-negative integer"), ("min_lr_ratio", 2.0, "in [0, 1]"),
    ("weight_decay", float("inf"), "a non-negative number"), ("beta2", 1.0, "in [0, 1)"),
    ("clip", 0.0, "a positive number (inf: no clipping)"), ("loss", "fast", "one of auto, torch, triton"),
    ("lr", 0, "a positive number"), ("grad_accum", 0, "an integer of at least 1"),
    ("save_every", -1, "a non-negative integer"),
])
def test_settings_that_cannot_train_are_refused_by_name(setting, value, what):
    """Caught when the config is made (command line, stages file or a resumed run's saved config),
    not as a traceback from the optimizer or the sampler steps later."""
    with pytest.raises(TrainError, match=f"^{setting} must be {re.escape(what)}, got {re.escape(repr(value))}$"):
        TrainConfig(stages=[Stage(corpora=["c"], steps=1)], **{setting: value})
    with pytest.raises(TrainError, match=r"stage: steps must be an integer >= 1, got '3'"):
        Stage(corpora=["c"], steps="3")
    TrainConfig(stages=[Stage(corpora=["c"], steps=1)], clip=float("inf"), weight_decay=0.0, min_lr_ratio=1.0,
                lr=1, seed=2**63 - 1)  # an int will do for a float
    TrainConfig(stages=[Stage(corpora=["c"], steps=1)], min_lr_ratio=0, beta1=0, beta2=0.0, warmup=0, save_every=0,
                seed=0)  # the lower ends of the ranges


def small_model(monkeypatch):
    """Shrink the tiny preset so these tests stay fast (the loop, not the model, is under test)."""
    from rcond import modeling

    monkeypatch.setitem(modeling.PRESETS, "tiny", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                       num_attention_heads=2, max_position_embeddings=64))


def logged(run_dir, key):
    return [json.loads(line)[key] for line in open(run_dir / "log.jsonl")]


def losses(run_dir):
    return logged(run_dir, "loss")


def test_lr_schedule_hand_computed():
    assert lr_lambda(0, 4, 20, 0.1) == 0.25 and lr_lambda(3, 4, 20, 0.1) == 1.0
    assert lr_lambda(4, 4, 20, 0.1) == pytest.approx(1.0)
    assert lr_lambda(12, 4, 20, 0.1) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lr_lambda(20, 4, 20, 0.1) == pytest.approx(0.1)


def test_the_optimizer_decays_matrices_not_norms_with_the_configured_betas_and_lr(corpus, monkeypatch):
    """AdamW with decoupled weight decay on the weight matrices and embeddings, none on the RMSNorm
    gains (named ``*norm.weight`` in the Llama model), betas (beta1, beta2) in that order, and the peak lr."""
    from rcond.corpus import load
    from rcond.modeling import build_model
    from rcond.train import make_optimizer

    small_model(monkeypatch)
    _, scheme, tok = load(str(corpus))
    model = build_model("tiny", tok, scheme, max_position_embeddings=48)
    cfg = cfg_for(corpus, weight_decay=0.05, beta1=0.8, beta2=0.9, lr=2e-3)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    name = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ({name[id(p)] for p in g["params"]} for g in opt.param_groups)
    norms = {n for n in name.values() if n.endswith("norm.weight")}
    assert no_decay == norms and len(norms) == 5 and decay == set(name.values()) - norms
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert all(g["betas"] == (0.8, 0.9) and g["lr"] == 2e-3 for g in opt.param_groups)


def test_loss_decreases_and_outputs(tmp_path, corpus, monkeypatch):
    small_model(monkeypatch)
    r = train(cfg_for(corpus, steps=30), tmp_path / "run", progress=False)
    ls = losses(tmp_path / "run")
    assert len(ls) == 30 and sum(ls[-5:]) / 5 < sum(ls[:5]) / 5 - 0.5
    rec = json.loads(open(tmp_path / "run" / "log.jsonl").readline())
    assert {"loss_on", "loss_off", "loss_bin_0", "loss_bin_3", "tokens_per_s"} <= set(rec)
    from rcond.modeling import load_pretrained

    model, tok, scheme = load_pretrained(tmp_path / "run" / "model")
    assert scheme.num_bins == 4 and not r.interrupted


def test_resume_gives_the_uninterrupted_curve(tmp_path, corpus, monkeypatch):
    small_model(monkeypatch)
    train(cfg_for(corpus, steps=12), tmp_path / "straight", progress=False)
    log = tmp_path / "cut" / "log.jsonl"

    def interrupt_after_four_steps():
        while not (log.exists() and len(log.read_text().splitlines()) >= 4):
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_after_four_steps, daemon=True).start()
    r = train(cfg_for(corpus, steps=12), tmp_path / "cut", progress=False)
    assert r.interrupted and 4 <= r.steps_done < 12
    assert not (tmp_path / "cut" / "model").exists()
    r2 = train(None, tmp_path / "cut", resume=True, progress=False)
    assert r2.steps_done == 12 and not r2.interrupted
    assert losses(tmp_path / "cut") == losses(tmp_path / "straight")  # bit-identical on CPU


def sigint():
    os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_in_the_last_step_finishes_the_run(tmp_path, corpus, monkeypatch):
    """Nothing is left to continue: the run is not reported interrupted, publishes its model (no
    --resume needed for zero steps), and gives Ctrl-C back to Python's own handler afterwards."""
    small_model(monkeypatch)
    at_forward(monkeypatch, 3, sigint)
    handlers = [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)]
    r = train(cfg_for(corpus, steps=3), tmp_path / "run", progress=False)
    assert r.steps_done == 3 and not r.interrupted and (tmp_path / "run" / "model").is_dir()
    assert [signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)] == handlers


def test_a_second_ctrl_c_aborts_at_once(tmp_path, corpus, monkeypatch):
    """The first Ctrl-C asks for a checkpoint after the step; a second one within the step is a
    KeyboardInterrupt there and then: no checkpoint, no model."""
    small_model(monkeypatch)
    at_forward(monkeypatch, 2, lambda: (sigint(), sigint()))
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(corpus, steps=4), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoint").exists() and not (tmp_path / "run" / "model").exists()


def test_a_ctrl_c_while_the_final_model_is_saved_stops_it_and_resume_publishes_it(tmp_path, corpus, monkeypatch):
    """After the last step the loop's own handler is gone: a single Ctrl-C while the model is
    written stops the save (KeyboardInterrupt, no model/ published), not ignored as a request to
    finish the step. The checkpoint of the last step was written first, and --resume, with no step
    left to train, publishes the model from it instead of refusing the run as finished."""
    from rcond import train as train_module
    from rcond.modeling import load_pretrained

    small_model(monkeypatch)
    save = train_module.save_pretrained_atomic

    def interrupted_model_save(model, tokenizer, scheme, target, **kw):
        if Path(target).name == "model":
            sigint()
        return save(model, tokenizer, scheme, target, **kw)

    monkeypatch.setattr(train_module, "save_pretrained_atomic", interrupted_model_save)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(cfg_for(corpus, steps=2), run, progress=False)
    assert not (run / "model").exists() and (run / "checkpoint").is_dir()
    monkeypatch.setattr(train_module, "save_pretrained_atomic", save)
    r = train(None, run, resume=True, progress=False)
    assert r.steps_done == 2 and not r.interrupted and r.log == [] and len(losses(run)) == 2
    model, _, _ = load_pretrained(run / "model")
    checkpoint, _, _ = load_pretrained(run / "checkpoint")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), checkpoint.state_dict().values()))
    with pytest.raises(TrainError, match="already finished its 2 steps; nothing to continue"):
        train(None, run, resume=True, progress=False)


def test_a_ctrl_c_dropped_during_set_up_stops_the_run_before_its_first_step(tmp_path, corpus, monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt Python drops in a finalizer while the model is prepared (as
    inside the `regex` module's Group.__del__) used to be lost: the run trained every step and
    published its model. It is recorded, and the run stops before writing anything."""
    from rcond import train as train_module

    small_model(monkeypatch)
    monkeypatch.setattr(sys, "unraisablehook", lambda u: None)  # the "Exception ignored" report
    prepare = train_module.prepare_model

    def prepare_then_ctrl_c(*args, **kwargs):
        prepared = prepare(*args, **kwargs)
        DropsACtrlC()
        return prepared

    monkeypatch.setattr(train_module, "prepare_model", prepare_then_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt, match="set up"):
        train(cfg_for(corpus, steps=50), run, progress=False)
    assert not run.exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.setattr(train_module, "prepare_model", prepare)
    r = train(cfg_for(corpus, steps=3), run, progress=False)  # the next run starts with an empty record
    assert r.steps_done == 3 and not r.interrupted and (run / "model").is_dir()


def test_accumulation_normalises_by_global_token_count(tmp_path, corpus, monkeypatch):
    """Two micro-batches of 2 rows must give the step of one batch of 4 rows (not a mean of means)."""
    small_model(monkeypatch)
    train(cfg_for(corpus, steps=6, batch_size=4, grad_accum=1), tmp_path / "big", progress=False)
    train(cfg_for(corpus, steps=6, batch_size=2, grad_accum=2), tmp_path / "acc", progress=False)
    assert losses(tmp_path / "acc") == pytest.approx(losses(tmp_path / "big"), rel=1e-5, abs=1e-6)


def test_two_process_data_parallel_matches_one_process(tmp_path, corpus, monkeypatch):
    small_model(monkeypatch)
    train(cfg_for(corpus, steps=5, batch_size=2, grad_accum=2), tmp_path / "single", progress=False)
    script = tmp_path / "ddp.py"
    script.write_text(
        "import sys\nfrom rcond import modeling\n"
        "modeling.PRESETS['tiny'] = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,"
        " num_attention_heads=2, max_position_embeddings=64)\n"
        "from rcond.train import Stage, TrainConfig, train\n"
        f"cfg = TrainConfig(stages=[Stage(corpora=[{str(corpus)!r}], steps=5, name='s')], model='tiny',"
        " batch_size=2, grad_accum=1, warmup=2, lr=3e-3, seed=0, device='cpu')\n"
        "train(cfg, sys.argv[1], progress=False)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        str(script), str(tmp_path / "ddp")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert losses(tmp_path / "ddp") == pytest.approx(losses(tmp_path / "single"), rel=1e-4)
    # the gradient itself, before clipping: each rank's loss divided by the global trained-token count (by its
    # own count, the summed gradient is about twice as large, which AdamW's normalised step all but hides)
    assert logged(tmp_path / "ddp", "grad_norm") == pytest.approx(logged(tmp_path / "single", "grad_norm"), rel=1e-4)


def test_stages_from_config_and_mixture(tmp_path, monkeypatch):
    small_model(monkeypatch)
    a, tok = make_corpus(tmp_path, "a", seed=1)
    b, _ = make_corpus(tmp_path, "b", seed=2, tokenizer=tok)
    (tmp_path / "stages.toml").write_text(
        'lr = 2e-3\nbatch_size = 2\nwarmup = 1\ndevice = "cpu"\n'
        '[[stage]]\nname = "first"\ncorpora = ["a"]\nsteps = 3\n'
        '[[stage]]\nname = "both"\ncorpora = ["a", "b"]\nweights = [0.25, 0.75]\nsteps = 4\n')
    cfg = load_config_file(tmp_path / "stages.toml", {"model": "tiny"})
    assert cfg.lr == 2e-3 and [s.steps for s in cfg.stages] == [3, 4]
    assert cfg.stages[1].corpora == [str(a.resolve()), str(b.resolve())]
    train(cfg, tmp_path / "run", progress=False)
    stages = [json.loads(line)["stage"] for line in open(tmp_path / "run" / "log.jsonl")]
    assert stages == ["first"] * 3 + ["both"] * 4


@pytest.mark.parametrize("body,message", [
    ('[[stage]]\ncorpora = "a"\nsteps = 2\n', r"stage 1: corpora must be a list of corpus folders.*got 'a'"),
    ('[[stage]]\ncorpora = ["a"]\nsteps = 2\n[[stage]]\nname = "mix"\ncorpora = ["a", "b"]\nsteps = 2\n'
     'weights = [1e308, 1e308]\n', r"stage 2 \('mix'\): weights \[1e\+308, 1e\+308\] must be non-negative numbers "
                                   r"with a positive, finite sum$"),
    ('[[stage]]\ncorpora = ["a"]\nsteps = 2\n[[stage]]\ncorpora = ["a"]\nsteps = 0\n',
     r"stage 2: steps must be an integer >= 1, got 0$"),
    ('[[stage]]\ncorpora = ["a", "b"]\nsteps = 2\nweights = [1.0]\n',
     r"stage 1: weights has 1 values for 2 corpora; expected one per corpus$"),
    ('model = 5\n[[stage]]\ncorpora = ["a"]\nsteps = 2\n', r"model must be a string, got 5$"),
    ('trust_remote_code = "yes"\n[[stage]]\ncorpora = ["a"]\nsteps = 2\n',
     r"trust_remote_code must be true or false, got 'yes'$"),
    ('[[stage]]\ncorpora = [5]\nsteps = 2\n', r"stage 1: corpora must be a list of corpus folders.*got \[5\]"),
    ('[[stage]]\ncorpora = ["a"]\nsteps = 2\nweights = ["x"]\n', r"stage 1: weights must be a list of numbers"),
    ('[[stage]]\ncorpora = ["a"]\nsteps = 2\nname = 5\n', r"stage 1: name must be a string; got 5"),
    ('[[stage]]\ncorpora = ["a"]\nsteps = 2.5\n', r"stage 1: steps must be an integer >= 1, got 2.5"),
    ('stage = 5\n', r"no \[\[stage\]\] tables"),
    ('seed = 1.0\n[[stage]]\ncorpora = ["a"]\nsteps = 2\n', r"seed must be an integer in \[0, 2\*\*63 - 1\], got 1.0"),
    ('[[stage]]\ncorpora = []\nsteps = 2\n', r"stage 1: corpora lists no corpus folders; expected at least one$"),
    ('stage = [1, 2]\n', r"no \[\[stage\]\] tables"),
    ('learning_rate = 1e-3\n[[stage]]\ncorpora = ["a"]\nsteps = 2\n', r"unknown settings \['learning_rate'\]; known: \["),
    ('[[stage]]\ncorpora = ["a"]\nsteps = 2\nweight = [1.0]\n',
     r"stage 1 needs corpora and steps \(optional weights, name\); got \['corpora', 'steps', 'weight'\]$"),
    ('[[stage]]\ncorpora = ["a"]\nsteps = 2\nweights = [true]\n', r"stage 1: weights must be a list of numbers"),
    ('[[stage]\ncorpora = ["a"]\n', r"not valid TOML: "),
])
def test_a_stages_file_of_the_wrong_shape_is_refused_by_name(tmp_path, body, message):
    """Each wrong type in a stages file is a TrainError naming the file and the entry (a stage by its
    number and, if it has one, its name), not a TypeError from deep inside (and a string of corpora is
    not read as one corpus per character, a string as true, weights that overflow as a mixture)."""
    path = tmp_path / "stages.toml"
    path.write_text(body)
    with pytest.raises(TrainError, match=message) as e:
        load_config_file(path, {})
    assert str(e.value).startswith(f"{path}: ")


def test_a_stages_file_that_cannot_be_read_is_named(tmp_path):
    """A missing file and one that is not UTF-8 are TrainErrors naming the file (a traceback before)."""
    with pytest.raises(TrainError, match=rf"^{re.escape(str(tmp_path / 'none.toml'))}: no such config file$"):
        load_config_file(tmp_path / "none.toml", {})
    (tmp_path / "latin.toml").write_bytes(b'# caf\xe9\n[[stage]]\ncorpora = ["a"]\nsteps = 2\n')
    with pytest.raises(TrainError, match=rf"^{re.escape(str(tmp_path / 'latin.toml'))}: cannot read the config file"):
        load_config_file(tmp_path / "latin.toml", {})


def test_stages_without_a_name_are_named_by_their_number_from_one(tmp_path):
    """The names the log's records carry: stage1, stage2 as the file numbers them in its errors."""
    (tmp_path / "stages.toml").write_text('[[stage]]\ncorpora = ["a"]\nsteps = 2\n[[stage]]\ncorpora = ["a"]\nsteps = 1\n'
                                          '[[stage]]\nname = "last"\ncorpora = ["a"]\nsteps = 1\n')
    assert [s.name for s in load_config_file(tmp_path / "stages.toml", {}).stages] == ["stage1", "stage2", "last"]


def test_a_stage_made_in_code_is_named_in_its_errors():
    """Without a stages file or the command line, an error names the stage by its name, and a stage
    with no corpus says so (not as a weights error about an empty sum)."""
    with pytest.raises(TrainError, match=r"^stage 'warm': steps must be an integer >= 1, got 0$"):
        Stage(corpora=["a"], steps=0, name="warm")
    with pytest.raises(TrainError, match=r"^stage: corpora lists no corpus folders; expected at least one$"):
        Stage(corpora=[], steps=1)
    with pytest.raises(TrainError, match=r"^--corpus lists no corpus folders; expected at least one$"):
        Stage.from_options([], 1, None)


def test_a_stages_file_is_checked_before_the_command_line_overrides_it(tmp_path):
    (tmp_path / "stages.toml").write_text('lr = 1e-3\n[[stage]]\ncorpora = ["a"]\nsteps = 2\n')
    assert load_config_file(tmp_path / "stages.toml", {"lr": 0.5, "seed": None}).lr == 0.5
    with pytest.raises(TrainError, match=r"^lr must be a positive number, got -1.0$"):
        load_config_file(tmp_path / "stages.toml", {"lr": -1.0})


def test_the_command_line_stage_names_the_options():
    with pytest.raises(TrainError, match=r"^--weights has 2 values for 1 corpus; expected one per corpus$"):
        Stage.from_options(["a"], 2, [1.0, 2.0])
    with pytest.raises(TrainError, match=r"^--weights \[1e\+308, 1e\+308\] must be non-negative numbers"):
        Stage.from_options(["a", "b"], 2, [1e308, 1e308])
    with pytest.raises(TrainError, match=r"^--steps must be an integer >= 1, got 0$"):
        Stage.from_options(["a"], 0, None)
    assert Stage.from_options(["a"], 2, None) == Stage(corpora=["a"], steps=2, weights=[1.0], name="main")


def test_mixture_draws_follow_weights(tmp_path):
    from rcond.train import CorpusRows, Mixture

    a, tok = make_corpus(tmp_path, "a", seed=1)
    b, _ = make_corpus(tmp_path, "b", seed=2, tokenizer=tok)
    rows = {str(p): CorpusRows(str(p), 0) for p in (a, b)}
    m = Mixture(rows, Stage(corpora=[str(a), str(b)], steps=1, weights=[1, 3]), 0, 0)
    picks = m.draw(4000)
    share_b = sum(c == 1 for c, _ in picks) / len(picks)
    assert abs(share_b - 0.75) < 0.03
    # a weight of 0 is allowed, and leaves its corpus out of the stage
    only_b = Mixture(rows, Stage(corpora=[str(a), str(b)], steps=1, weights=[0, 2]), 0, 0)
    assert {c for c, _ in only_b.draw(200)} == {1}
    # every row of a corpus is seen exactly once per epoch, in a new order the next epoch
    fresh = CorpusRows(str(a), 0)
    n_a = len(fresh.dataset)
    first, second = [fresh.take() for _ in range(n_a)], [fresh.take() for _ in range(n_a)]
    assert sorted(first) == sorted(second) == list(range(n_a)) and first != second


@pytest.mark.parametrize("weights", [[0, 0], [1, -1], [float("nan"), 1], [1e308, 1e308], [float("inf"), 1]])
def test_bad_mixture_weights(weights):
    with pytest.raises(TrainError, match="must be non-negative numbers with a positive, finite sum"):
        Stage(corpora=["a", "b"], steps=1, weights=weights)


def crash():
    raise RuntimeError("simulated crash")  # a hard failure between checkpoints


def at_forward(monkeypatch, n, event=crash):
    """Call ``event`` at the start of the n-th forward pass (from 1) of the runs that follow (by
    default: crash); returns a function that undoes it."""
    from rcond import train as train_module

    real, calls = train_module.packed_hidden, [0]

    def forward(*args, **kw):
        calls[0] += 1
        if calls[0] == n:
            event()
        return real(*args, **kw)

    monkeypatch.setattr(train_module, "packed_hidden", forward)
    return lambda: monkeypatch.setattr(train_module, "packed_hidden", real)


def test_resume_after_a_crash_logs_each_step_once(tmp_path, corpus, monkeypatch):
    """A hard failure between checkpoints (here inside step 6, checkpoints every 2 steps): the
    resumed run trains steps 5 and 6 again, and the log keeps one record per step, the same
    records as a run that never failed."""
    small_model(monkeypatch)
    train(cfg_for(corpus, steps=6), tmp_path / "straight", progress=False)
    undo = at_forward(monkeypatch, 6)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg_for(corpus, steps=6, save_every=2), tmp_path / "cut", progress=False)
    with open(tmp_path / "cut" / "log.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a record cut short by the crash
    undo()
    train(None, tmp_path / "cut", resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "cut" / "log.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert losses(tmp_path / "cut") == losses(tmp_path / "straight")


def test_resume_in_a_mixed_stage_after_epochs_gives_the_uninterrupted_curve(tmp_path, monkeypatch):
    """A two-stage run (corpus a, then a mixed with b) on corpora of 3 rows, checkpointed every 2
    steps and crashed in step 5: the resumed run restores the stages, each corpus's epoch and place
    in its reshuffled order, and the mixture's draws, so its log equals the uninterrupted run's."""
    small_model(monkeypatch)
    a, tok = make_corpus(tmp_path, "a", n=10, seed=1)
    b, _ = make_corpus(tmp_path, "b", n=10, seed=2, tokenizer=tok)

    def cfg(**kw):
        return TrainConfig(stages=[Stage(corpora=[str(a)], steps=2, name="a"),
                                   Stage(corpora=[str(a), str(b)], steps=4, weights=[1, 1], name="mix")],
                           model="tiny", batch_size=2, warmup=1, lr=3e-3, device="cpu", **kw)

    train(cfg(), tmp_path / "straight", progress=False)
    undo = at_forward(monkeypatch, 5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg(save_every=2), tmp_path / "cut", progress=False)
    undo()
    state = torch.load(tmp_path / "cut" / "checkpoint" / "training_state.pt", weights_only=False)
    assert state["step"] == 4 and json.loads(state["data"])["corpora"][str(a)]["epoch"] >= 1
    assert train(None, tmp_path / "cut", resume=True, progress=False).steps_done == 6
    assert losses(tmp_path / "cut") == losses(tmp_path / "straight")


def test_a_log_cut_by_a_crash_keeps_its_complete_records_up_to_the_checkpoint(tmp_path):
    """A complete last record whose newline the crash cut off is kept (with its newline, so the next
    record starts a line of its own); lines that are not step records are dropped, as are steps
    after the checkpoint's."""
    from rcond.train import _truncate_log

    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0}\nnull\n[3]\n{"step": "2"}\n{"step": 2, "loss": 1.5}')
    _truncate_log(log, 2)
    assert log.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    _truncate_log(log, 1)
    assert log.read_text() == '{"step": 1, "loss": 2.0}\n'


def test_a_training_state_that_is_not_plain_tensors_and_numbers_is_refused(tmp_path):
    """The state is read with weights_only=True: a pickle of any other object (which could run code
    as it loads) is refused as not an rcond training state, not loaded."""
    from fractions import Fraction

    (tmp_path / "run" / "checkpoint").mkdir(parents=True)
    torch.save({"step": Fraction(1, 2)}, tmp_path / "run" / "checkpoint" / "training_state.pt")
    with pytest.raises(TrainError, match=r"training_state.pt is corrupt or not an rcond training state \(Unpickling"):
        train(None, tmp_path / "run", resume=True, progress=False)


def test_resume_refuses_another_process_count(tmp_path, corpus, monkeypatch):
    import torch

    small_model(monkeypatch)
    train(cfg_for(corpus, steps=2), tmp_path / "run", progress=False)
    state_file = tmp_path / "run" / "checkpoint" / "training_state.pt"
    state = torch.load(state_file, weights_only=False)
    assert state["world"] == 1
    state["world"], state["step"] = 2, 1  # as if interrupted at step 1 under torchrun --nproc_per_node=2
    torch.save(state, state_file)
    with pytest.raises(TrainError, match=r"trained on 2 process\(es\) and is resumed on 1"):
        train(None, tmp_path / "run", resume=True, progress=False)


def test_resume_errors(tmp_path, corpus, monkeypatch):
    with pytest.raises(TrainError, match="no checkpoint"):
        train(None, tmp_path / "none", resume=True, progress=False)
    small_model(monkeypatch)
    train(cfg_for(corpus, steps=2), tmp_path / "run", progress=False)
    with pytest.raises(TrainError, match="already finished its 2 steps; nothing to continue"):
        train(None, tmp_path / "run", resume=True, progress=False)
    (tmp_path / "run" / "checkpoint" / "training_state.pt").write_bytes(b"garbage")
    with pytest.raises(TrainError, match="corrupt"):
        train(None, tmp_path / "run", resume=True, progress=False)
    (tmp_path / "run" / "checkpoint" / "training_state.pt").unlink()
    with pytest.raises(TrainError, match="incomplete"):
        train(None, tmp_path / "run", resume=True, progress=False)


def test_resume_takes_the_runs_own_config_and_needs_its_record_of_the_corpora(tmp_path, corpus, monkeypatch):
    """A config passed with resume is refused (the saved one is used); a run folder whose
    train_config.json is gone or not JSON cannot be checked against its corpora, and says so."""
    with pytest.raises(TrainError, match=r"^resume continues with the run's saved configuration; pass cfg=None$"):
        train(cfg_for(corpus, steps=2), tmp_path / "run", resume=True, progress=False)
    small_model(monkeypatch)
    run = interrupted_run(tmp_path, corpus)
    config = run / "train_config.json"
    message = rf"^--resume: {re.escape(str(config))} is missing or unreadable; it records the corpora the run started on$"
    config.write_text('{"config": ')
    with pytest.raises(TrainError, match=message):
        train(None, run, resume=True, progress=False)
    config.unlink()
    with pytest.raises(TrainError, match=message):
        train(None, run, resume=True, progress=False)


def test_resume_refuses_a_corpus_changed_since_the_run_started(tmp_path, corpus, monkeypatch):
    """A corpus whose scheme changed since the run started (new bin edges: the same RTG token would
    mean another reward range after the resume) is caught here, even with its fingerprints intact."""
    import shutil

    small_model(monkeypatch)
    mine = tmp_path / "corpus"
    shutil.copytree(corpus, mine)
    train(cfg_for(mine, steps=2), tmp_path / "run", progress=False)
    state_file = tmp_path / "run" / "checkpoint" / "training_state.pt"
    state = torch.load(state_file, weights_only=False)
    state["step"] = 1  # as if interrupted after step 1
    torch.save(state, state_file)
    from rcond.corpus import scheme_sha256
    from rcond.tokens import ControlScheme

    scheme = ControlScheme.load(mine)
    scheme.edges[0] += 0.001
    scheme.options["scheme_sha256"] = scheme_sha256(scheme)  # fingerprinted again, or load would refuse it first
    scheme.save(mine)
    with pytest.raises(TrainError, match=rf"--resume: corpus {mine} changed since the run started \(edges, options in its"):
        train(None, tmp_path / "run", resume=True, progress=False)


def test_corpus_tokenizer_mismatch(tmp_path, monkeypatch):
    small_model(monkeypatch)
    a, _ = make_corpus(tmp_path, "a", seed=1)
    b, _ = make_corpus(tmp_path, "b", seed=2)  # its own tokenizer
    cfg = TrainConfig(stages=[Stage(corpora=[str(a), str(b)], steps=1)], device="cpu")
    with pytest.raises(TrainError, match="different tokenizers"):
        train(cfg, tmp_path / "run", progress=False)
    # a saved model whose tokenizer differs from the corpus's
    train(cfg_for(a, steps=1), tmp_path / "m", progress=False)
    cfg = cfg_for(b, steps=1, model=str(tmp_path / "m" / "model"))
    with pytest.raises(TrainError, match="different tokenizer than model"):
        train(cfg, tmp_path / "run2", progress=False)


@pytest.mark.parametrize("other,message", [
    (dict(num_bins=3), "use different control tokens (4 vs 3 bins); preprocess them with the same --bins"),
    (dict(block_size=64), "have different block sizes"),
])
def test_corpora_that_cannot_be_trained_together_are_refused_before_the_run_folder_is_made(tmp_path, other, message):
    """Other bins (other control tokens) or another block size than the first corpus: a TrainError
    naming both corpora, before anything is built or written."""
    a, tok = make_corpus(tmp_path, "a", n=20, seed=1)
    b, _ = make_corpus(tmp_path, "b", n=20, seed=1, tokenizer=tok, **other)
    cfg = TrainConfig(stages=[Stage(corpora=[str(a), str(b)], steps=1)], device="cpu")
    with pytest.raises(TrainError, match=f"^corpora {re.escape(str(a))} and {re.escape(str(b))} {re.escape(message)}$"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_corpora_with_other_bin_edges_are_trained_with_a_warning(tmp_path, monkeypatch, capsys):
    small_model(monkeypatch)
    a, tok = make_corpus(tmp_path, "a", seed=1)
    b, _ = make_corpus(tmp_path, "b", seed=2, tokenizer=tok)  # other rewards: other quantile edges
    same, _ = make_corpus(tmp_path, "same", seed=1, tokenizer=tok)
    edges = {p: json.loads((p / "scheme.json").read_text())["edges"] for p in (a, b, same)}
    assert edges[a] != edges[b] and edges[a] == edges[same]
    cfg = TrainConfig(stages=[Stage(corpora=[str(a), str(same)], steps=1), Stage(corpora=[str(b)], steps=1)],
                      device="cpu", batch_size=2, warmup=1)
    train(cfg, tmp_path / "run", progress=False)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1  # b only: 'same' shares a's edges
    shown = ", ".join(f"{e:.4g}" for e in edges[b])
    assert f"{a} and {b} bin rewards at different edges" in err and f"vs [{shown}])" in err
    assert f"the saved model keeps the edges of {b}" in err
    saved = json.loads((tmp_path / "run" / "model" / "scheme.json").read_text())
    assert saved["edges"] == edges[b]


def test_starting_from_an_rcond_model_whose_rtg_tokens_meant_other_rewards_warns(tmp_path, monkeypatch, capsys):
    """A run from a model rcond trained (its folder holds a scheme.json) on a corpus that bins
    rewards at other edges, or into another number of bins, retrains what its RTG tokens mean:
    said once per such corpus; none for a corpus of the model's own scheme, a preset, or a model
    folder without a scheme (any other causal LM)."""
    small_model(monkeypatch)
    a, _ = make_corpus(tmp_path, "a", n=40, seed=1)
    train(cfg_for(a, steps=1), tmp_path / "first", progress=False)  # from a preset: nothing to compare
    assert "warning" not in capsys.readouterr().err
    model = tmp_path / "first" / "model"
    before = json.loads((model / "scheme.json").read_text())["edges"]
    from rcond.tokenizer import load_tokenizer

    def from_model(name, **kw):  # a corpus to train the model on is tokenized with the model's tokenizer
        return make_corpus(tmp_path, name, n=40, tokenizer=load_tokenizer(model), **kw)[0]

    same = from_model("same", seed=1)
    other = from_model("other", seed=2)  # other rewards: other quantile edges
    more = from_model("more", seed=1, num_bins=6)
    edges = {p: json.loads((p / "scheme.json").read_text())["edges"] for p in (same, other, more)}
    assert edges[same] == before and edges[other] != before and len(edges[more]) == 5

    train(cfg_for(same, steps=1, model=str(model)), tmp_path / "r1", progress=False)
    assert "warning" not in capsys.readouterr().err
    train(cfg_for(other, steps=1, model=str(model)), tmp_path / "r2", progress=False)
    err = capsys.readouterr().err
    shown = ", ".join(f"{e:.4g}" for e in before)
    assert err.count("warning:") == 1 and (f"warning: {model} was trained with 4 RTG bins at edges [{shown}], "
                                           f"and {other} bins rewards into 4 at [") in err
    assert f"the saved model keeps the edges of {other}" in err
    hint = f"preprocess with --binning edges:{','.join(map(repr, before))})"
    assert hint in err
    kept = from_model("kept", seed=2, binning=hint.split()[-1][:-1])
    assert json.loads((kept / "scheme.json").read_text())["edges"] == before  # the hint's flag keeps them
    train(cfg_for(kept, steps=1, model=str(model)), tmp_path / "r2b", progress=False)
    assert "warning" not in capsys.readouterr().err
    train(cfg_for(more, steps=1, model=str(model)), tmp_path / "r3", progress=False)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"and {more} bins rewards into 6 at [" in err
    assert json.loads((tmp_path / "r3" / "model" / "scheme.json").read_text())["num_bins"] == 6

    (model / "scheme.json").write_text("{")  # a damaged scheme: said, and the run goes on
    train(cfg_for(same, steps=1, model=str(model)), tmp_path / "r4", progress=False)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"warning: {model / 'scheme.json'}: not a valid scheme file" in err
    assert "is not checked" in err
    (model / "scheme.json").unlink()  # a causal LM folder without a scheme: nothing to compare
    train(cfg_for(same, steps=1, model=str(model)), tmp_path / "r5", progress=False)
    assert "warning" not in capsys.readouterr().err


def test_the_model_records_every_corpus_format_it_learned(tmp_path, monkeypatch):
    """A mixture of a scored corpus (first: its scheme is the model's) and a dialog corpus records
    both formats in the model's scheme.json, for the checkpoint too; a run from that model adds
    the formats the model learned before, and from a model saved before formats were recorded,
    its scheme's format."""
    small_model(monkeypatch)
    a, tok = make_corpus(tmp_path, "a", n=40, seed=1)
    turns = [{"turns": [{"role": "user", "content": "review:"}, {"role": "assistant", "content": w, "reward": r}]}
             for w, r in zip(WORDS, [1.0, -1.0, 0.2, 0.9, -0.8, 0.5, -0.4, 0.0, 1.0, -0.3]) for _ in range(4)]
    src = write_jsonl(tmp_path / "d.jsonl", turns)
    build(SourceReader([str(src)], "dialog"), tmp_path / "d", tok, num_bins=4,
          opts=PackOptions(block_size=48, uncond_fraction=0.1), progress=False)
    mix = TrainConfig(stages=[Stage(corpora=[str(a), str(tmp_path / "d")], steps=2, weights=[1.0, 1.0], name="m")],
                      model="tiny", batch_size=4, warmup=1, lr=3e-3, seed=0, device="cpu")
    train(mix, tmp_path / "mix", progress=False)

    def options(folder):
        return json.loads((folder / "scheme.json").read_text())["options"]

    assert options(tmp_path / "mix" / "model")["format"] == "scored"
    assert options(tmp_path / "mix" / "model")["formats"] == options(tmp_path / "mix" / "checkpoint")["formats"] \
        == ["dialog", "scored"]
    train(cfg_for(a, steps=1, model=str(tmp_path / "mix" / "model")), tmp_path / "on", progress=False)
    assert options(tmp_path / "on" / "model")["formats"] == ["dialog", "scored"]
    old = tmp_path / "mix" / "model" / "scheme.json"
    scheme = json.loads(old.read_text())
    del scheme["options"]["formats"]
    scheme["options"]["format"] = "dialog"
    old.write_text(json.dumps(scheme))
    train(cfg_for(a, steps=1, model=str(tmp_path / "mix" / "model")), tmp_path / "on2", progress=False)
    assert options(tmp_path / "on2" / "model")["formats"] == ["dialog", "scored"]
    train(cfg_for(a, steps=1), tmp_path / "plain", progress=False)
    assert options(tmp_path / "plain" / "model")["formats"] == ["scored"]
    from rcond.corpus import scheme_sha256
    from rcond.tokens import ControlScheme

    for run in ("on", "on2", "plain"):   # the fingerprint of the scheme is of what the model's scheme.json holds
        saved = ControlScheme.load(tmp_path / run / "model")
        assert saved.options["scheme_sha256"] == scheme_sha256(saved)


def test_a_checkpoints_formats_that_are_not_a_list_of_names_are_not_read(tmp_path):
    from rcond.train import model_scheme
    from rcond.tokens import ControlScheme

    for recorded, want in [("dialog", ["scored"]), (["dialog", 3, None], ["dialog", "scored"]), (None, ["scored"])]:
        ControlScheme(num_bins=2, edges=[0.0], options={"formats": recorded}).save(tmp_path)
        assert model_scheme(ControlScheme(num_bins=2, edges=[0.0]), ["scored"], tmp_path).options["formats"] == want


def test_a_start_models_formats_that_are_not_a_list_of_names_are_not_read(tmp_path):
    """As a checkpoint's: a start model whose scheme.json (hand-edited) records formats as other than
    a list is read as one saved before formats were recorded (its format, here pairs), not as the
    letters of a string or a crash on a number; of a list, only the names are read."""
    from rcond.tokens import ControlScheme
    from rcond.train import learned_formats

    corpora = {"c": stand_in("c", 2, [0.0], options={"format": "scored"})}
    for recorded, want in [("dialog", ["pairs", "scored"]), (5, ["pairs", "scored"]),
                           (["dialog", 3, ["text"]], ["dialog", "scored"]), ([], ["pairs", "scored"])]:
        ControlScheme(num_bins=2, edges=[0.0], options={"format": "pairs", "formats": recorded}).save(tmp_path)
        assert learned_formats(str(tmp_path), corpora) == want, recorded


def test_a_resumed_run_keeps_the_formats_of_the_model_it_started_from(tmp_path, monkeypatch):
    """A run from a model given by a relative path, resumed from another folder (or after that
    model is gone): the formats its checkpoint recorded are kept in the final model's scheme."""
    small_model(monkeypatch)
    a, _ = make_corpus(tmp_path, "a", n=40, seed=1)
    train(cfg_for(a, steps=1), tmp_path / "first", progress=False)
    scheme_file = tmp_path / "first" / "model" / "scheme.json"
    scheme = json.loads(scheme_file.read_text())
    scheme["options"]["formats"] = ["dialog", "scored"]   # as a model that also learned dialogs records it
    scheme_file.write_text(json.dumps(scheme))
    monkeypatch.chdir(tmp_path)
    run = interrupted_run(tmp_path, a, model="first/model")
    assert json.loads((run / "checkpoint" / "scheme.json").read_text())["options"]["formats"] == ["dialog", "scored"]
    import shutil

    shutil.rmtree(run / "model")
    monkeypatch.chdir(a)   # "first/model" is not here
    assert train(None, run, resume=True, progress=False).steps_done == 2
    assert json.loads((run / "model" / "scheme.json").read_text())["options"]["formats"] == ["dialog", "scored"]


def stand_in(path, num_bins, edges, **kw):
    """What the warnings read of a CorpusRows (its path and scheme), without a corpus on disk."""
    from types import SimpleNamespace

    from rcond.tokens import ControlScheme

    return SimpleNamespace(path=path, scheme=ControlScheme(num_bins=num_bins, edges=edges, **kw))


def test_which_start_models_are_compared_with_the_corpora_by_hand(tmp_path, monkeypatch):
    """start_model_differences on hand-made schemes: a model folder given as ~/m is read from the
    home folder; a corpus whose RTG tokens are spelt otherwise (another rtg_template) shares none
    with the model and is not warned about; a 1-bin model (no edges) is warned about without a
    --binning edges: hint, which would give no edges; a folder named like a preset in the working
    folder is not read, as the preset is what the run trains."""
    from rcond.tokens import ControlScheme
    from rcond.train import learned_formats, start_model_differences, start_scheme

    monkeypatch.setenv("HOME", str(tmp_path))
    for name, bins, edges in (("m", 2, [0.5]), ("one", 1, []), ("tiny", 2, [0.5])):
        (tmp_path / name).mkdir()
        ControlScheme(num_bins=bins, edges=edges, options={"formats": ["dialog"]}).save(tmp_path / name)
    four = stand_in("c4", 4, [-0.5, 0.0, 0.5], options={"format": "scored"})
    spelt_otherwise = stand_in("t", 4, [-0.5, 0.0, 0.5], rtg_template="<|level:{k}|>")
    assert start_scheme("~/m").edges == [0.5] and learned_formats("~/m", {"c4": four}) == ["dialog", "scored"]
    assert start_model_differences("~/m", {"c4": four, "t": spelt_otherwise}, "c4") == [
        "~/m was trained with 2 RTG bins at edges [0.5], and c4 bins rewards into 4 at [-0.5, 0, 0.5]: an RTG token "
        "the two share now stands for another reward range than in the model's training (to keep the model's, "
        "preprocess with --binning edges:0.5); the saved model keeps the edges of c4, through which "
        "`rcond sample --reward` maps a reward"]
    (warning,) = start_model_differences(str(tmp_path / "one"), {"c4": four}, "c4")
    assert warning.startswith(f"{tmp_path / 'one'} was trained with 1 RTG bins at edges [], and c4 bins rewards into "
                              f"4 at [-0.5, 0, 0.5]: an RTG token the two share now stands for another reward range "
                              f"than in the model's training; the saved model keeps")
    monkeypatch.chdir(tmp_path)
    assert start_scheme("tiny") is None and start_model_differences("tiny", {"c4": four}, "c4") == []
    assert learned_formats("tiny", {"c4": four}) == ["scored"]


def test_every_corpus_after_the_first_is_compared_with_the_first_by_hand():
    """edge_differences on hand-made schemes a [0.5], b [0.25], c [0.5]: the second corpus, b, is
    warned about (it is not skipped as the first of the rest), c, with a's edges, is not."""
    from rcond.train import edge_differences

    corpora = {p: stand_in(p, 2, e) for p, e in (("a", [0.5]), ("b", [0.25]), ("c", [0.5]))}
    assert edge_differences(corpora, "c") == [
        "a and b bin rewards at different edges ([0.5] vs [0.25]): the same RTG token stands for a different reward "
        "range in each; the saved model keeps the edges of c, through which `rcond sample --reward` maps a reward"]


def test_a_warmup_is_measured_against_the_steps_of_every_stage():
    """warmup_note by hand on a run of two stages, 2 + 3 = 5 steps: a warmup of 5 reaches the peak on
    the run's last step (not longer than the run: no note, though longer than either stage); one of
    6, a step past the run, gets the note, ending at 5/6 of the peak lr 0.006 = 0.005."""
    from rcond.train import warmup_note

    def cfg(warmup):
        return TrainConfig(stages=[Stage(corpora=["a"], steps=2), Stage(corpora=["b"], steps=3)], warmup=warmup,
                           lr=6e-3)

    assert warmup_note(cfg(5)) == []
    assert warmup_note(cfg(6)) == [
        "a warmup of 6 steps is longer than the run's 5: the learning rate rises all run and ends at 0.005, not the "
        "peak lr 0.006, and never decays; give --warmup 5 or fewer (warmup in a config file), or more steps"]


def test_the_models_scheme_is_a_copy_and_the_corpus_scheme_is_left_as_it_was():
    """model_scheme returns a new scheme with the formats and its fingerprint made again; the
    corpus's own scheme (which config.json records and a resume compares with the corpus's
    scheme.json) keeps its options as they were: no formats, its own fingerprint."""
    from rcond.corpus import scheme_sha256
    from rcond.tokens import ControlScheme
    from rcond.train import model_scheme

    corpus_scheme = ControlScheme(num_bins=2, edges=[0.0], options={"format": "scored"})
    corpus_scheme.options["scheme_sha256"] = fingerprint = scheme_sha256(corpus_scheme)
    saved = model_scheme(corpus_scheme, ["dialog", "scored"], None)
    assert corpus_scheme.options == {"format": "scored", "scheme_sha256": fingerprint}
    assert saved.options["formats"] == ["dialog", "scored"]
    assert saved.options["scheme_sha256"] == scheme_sha256(saved) != fingerprint


def test_existing_out_refused(tmp_path, corpus, monkeypatch):
    small_model(monkeypatch)
    train(cfg_for(corpus, steps=1), tmp_path / "run", progress=False)
    with pytest.raises(TrainError, match="--resume"):
        train(cfg_for(corpus, steps=1), tmp_path / "run", progress=False)


def test_an_interrupted_run_is_not_started_over_without_resume(tmp_path, corpus, monkeypatch):
    """A run folder with a checkpoint but no model yet (interrupted) is refused, not replaced: its
    checkpoint is what --resume continues from."""
    import shutil

    small_model(monkeypatch)
    run = interrupted_run(tmp_path, corpus)
    shutil.rmtree(run / "model")
    with pytest.raises(TrainError, match=rf"^{re.escape(str(run))} already exists; pass --resume to continue that run"):
        train(cfg_for(corpus, steps=2), run, progress=False)
    assert torch.load(run / "checkpoint" / "training_state.pt", weights_only=True)["step"] == 1


def test_the_progress_bar_of_a_resumed_run_counts_from_its_checkpoint(tmp_path, corpus, monkeypatch, capsys):
    """Resumed at step 1 of 2, the bar ends at 2/2 (it showed 1/2: counting from 0)."""
    small_model(monkeypatch)
    run = interrupted_run(tmp_path, corpus)
    capsys.readouterr()
    train(None, run, resume=True, progress=True)
    assert re.findall(r"train:[^\r\n]*? (\d+)/2 ", capsys.readouterr().err)[-1] == "2"


def test_run_that_failed_before_its_first_checkpoint_can_be_started_again(tmp_path, corpus, monkeypatch):
    """It left only train_config.json and log.jsonl (nothing to resume; here it crashed in step 2,
    after logging step 1): a fresh start replaces them instead of refusing the folder, and its log
    holds its own steps only, not the failed run's step 1 before them."""
    small_model(monkeypatch)
    undo = at_forward(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg_for(corpus, steps=2), tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["log.jsonl", "train_config.json"]
    assert len(losses(tmp_path / "run")) == 1
    undo()
    r = train(cfg_for(corpus, steps=2), tmp_path / "run", progress=False)
    assert r.steps_done == 2 and [json.loads(line)["step"] for line in open(tmp_path / "run" / "log.jsonl")] == [1, 2]


def test_a_step_with_no_trained_tokens_is_refused_naming_the_step_as_the_log_numbers_it(tmp_path, corpus, monkeypatch):
    """Rows whose loss weights are all 0 (not something preprocess writes: faked here for step 2)
    would divide by zero; the error names step 2, the number step 1's log record is followed by."""
    from rcond import train as train_module

    small_model(monkeypatch)
    collate, calls = train_module.collate, [0]

    def untrained_second_step(*args):
        calls[0] += 1
        batch = collate(*args)
        return {**batch, "loss_weight": batch["loss_weight"] * 0} if calls[0] == 2 else batch

    monkeypatch.setattr(train_module, "collate", untrained_second_step)
    with pytest.raises(TrainError, match=r"^step 2: the rows drawn carry no trained tokens \(all loss weights 0\)$"):
        train(cfg_for(corpus, steps=3), tmp_path / "run", progress=False)
    assert [json.loads(line)["step"] for line in open(tmp_path / "run" / "log.jsonl")] == [1]


def test_gradients_are_clipped_to_the_clip_norm(tmp_path, corpus, monkeypatch):
    """One step at lr 1e-2 without weight decay: Adam moves each weight by about lr whatever the
    gradient's scale, unless the gradient is clipped below Adam's eps (1e-8): with clip 1e-12 no weight
    moves by more than lr * 1e-12 / 1e-8 = 1e-6. The logged grad_norm is the norm before clipping."""
    from rcond.corpus import load
    from rcond.modeling import build_model, load_pretrained

    small_model(monkeypatch)
    _, scheme, tok = load(str(corpus))
    start = build_model("tiny", tok, scheme, seed=0, max_position_embeddings=48).state_dict()
    moved = {}
    for clip in (1e-12, math.inf):
        r = train(cfg_for(corpus, steps=1, clip=clip, lr=1e-2, warmup=0, weight_decay=0.0), tmp_path / str(clip),
                  progress=False)
        assert r.log[0]["grad_norm"] > 1e-3
        model, _, _ = load_pretrained(tmp_path / str(clip) / "model")
        moved[clip] = max(float((w - start[k]).abs().max()) for k, w in model.state_dict().items())
    assert moved[1e-12] < 1.1e-6 and moved[math.inf] > 5e-3


def test_triton_loss_on_cpu_is_refused_before_anything_is_written(tmp_path, corpus):
    with pytest.raises(TrainError, match="--loss triton needs a CUDA device"):
        train(cfg_for(corpus, steps=1, loss="triton"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_out_of_memory_names_the_setting_to_lower(tmp_path, corpus, monkeypatch):
    from rcond import train as train_module

    small_model(monkeypatch)

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train_module, "packed_hidden", oom)
    with pytest.raises(TrainError, match=r"out of memory with --batch-size 4 rows of 48 tokens: lower --batch-size"):
        train(cfg_for(corpus, steps=1), tmp_path / "run", progress=False)


@pytest.mark.parametrize("out,message", [
    ("afile", r"--out {t}/afile: {t}/afile is a file, not a folder; expected a run directory"),
    ("afile/run", r"--out {t}/afile/run: {t}/afile is a file, not a folder; expected a run directory"),
    ("", r"--out is empty; expected the run directory"),
    (" ", r"--out is empty; expected the run directory"),  # blank: not a folder named ' ' in the working directory
])
def test_an_out_that_cannot_be_a_run_directory_is_refused(tmp_path, corpus, monkeypatch, out, message):
    monkeypatch.chdir(tmp_path)  # where a relative (blank) --out would be made
    (tmp_path / "afile").write_text("mine")
    target = str(tmp_path / out) if out.strip() else out
    with pytest.raises(TrainError, match="^" + message.format(t=re.escape(str(tmp_path)))):
        train(cfg_for(corpus, steps=1), target, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"] and (tmp_path / "afile").read_text() == "mine"


def test_a_seed_beyond_64_bits_is_refused():
    with pytest.raises(TrainError, match=r"^seed must be an integer in \[0, 2\*\*63 - 1\], got 99999999999999999999999$"):
        TrainConfig(stages=[Stage(corpora=["c"], steps=1)], seed=99999999999999999999999)


def interrupted_run(tmp_path, corpus, **kw) -> Path:
    """A 2-step run whose checkpoint says it stopped after step 1 (so that --resume continues it)."""
    run = tmp_path / "run"
    train(cfg_for(corpus, steps=2, **kw), run, progress=False)
    state_file = run / "checkpoint" / "training_state.pt"
    state = torch.load(state_file, weights_only=False)
    state["step"] = 1
    torch.save(state, state_file)
    return run


@pytest.mark.parametrize("schemes", [[], {"/some/other/corpus": {}}])
def test_resume_refuses_a_train_config_whose_schemes_do_not_cover_the_corpora(tmp_path, corpus, monkeypatch, schemes):
    small_model(monkeypatch)
    run = interrupted_run(tmp_path, corpus)
    recorded = json.loads((run / "train_config.json").read_text())
    recorded["schemes"] = schemes
    (run / "train_config.json").write_text(json.dumps(recorded))
    with pytest.raises(TrainError, match=rf"^--resume: {run / 'train_config.json'} is damaged: its \"schemes\" must "
                                         rf"map every corpus of the run \({corpus}\)"):
        train(None, run, resume=True, progress=False)


def test_a_run_started_with_a_relative_corpus_path_resumes_from_another_folder(tmp_path, corpus, monkeypatch):
    small_model(monkeypatch)
    monkeypatch.chdir(corpus.parent)
    run = interrupted_run(tmp_path, Path(corpus.name))
    recorded = json.loads((run / "train_config.json").read_text())
    assert recorded["config"]["stages"][0]["corpora"] == [str(corpus)] and list(recorded["schemes"]) == [str(corpus)]
    monkeypatch.chdir(tmp_path)
    assert train(None, run, resume=True, progress=False).steps_done == 2


def edited_corpus(tmp_path, corpus, edit) -> Path:
    """A copy of ``corpus`` whose scheme.json ``edit`` changed by hand (the rows stay as they were)."""
    import shutil

    mine = tmp_path / "edited"
    shutil.copytree(corpus, mine)
    scheme = json.loads((mine / "scheme.json").read_text())
    edit(scheme)
    (mine / "scheme.json").write_text(json.dumps(scheme))
    return mine


def fewer_bins(scheme):
    scheme["num_bins"], scheme["edges"], scheme["counts"] = 3, scheme["edges"][:2], scheme["counts"][:3]


@pytest.mark.parametrize("edit,message", [
    (lambda scheme: scheme["options"].pop("block_size"),
     r"{c}/scheme.json: options.block_size must be the length the rows were packed to, 48; got None\. The "
     r"scheme.json does not belong to these rows"),
    (fewer_bins, r"{c}/scheme.json: the rows hold bin id 3 but num_bins is 3; the scheme.json does not belong"),
])
def test_a_hand_edited_scheme_json_is_refused_before_the_run_folder_is_made(tmp_path, corpus, edit, message):
    mine = edited_corpus(tmp_path, corpus, edit)
    with pytest.raises(CorpusError, match="^" + message.format(c=re.escape(str(mine)))):
        train(cfg_for(mine, steps=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_corpus_without_its_tokenizer_folder_says_so(tmp_path, corpus):
    import shutil

    mine = tmp_path / "corpus"
    shutil.copytree(corpus, mine)
    shutil.rmtree(mine / "tokenizer")
    with pytest.raises(CorpusError, match=rf"^{mine}: has no tokenizer/ folder \(the tokenizer its rows were "
                                          rf"encoded with, saved by rcond preprocess\)"):
        train(cfg_for(mine, steps=1), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_a_mistyped_preset_or_unreachable_model_names_the_presets(tmp_path, corpus, monkeypatch):
    from transformers import AutoTokenizer

    from rcond.modeling import ModelSpecError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSpecError, match=r"^unknown preset 'Tiny'; presets are micro, tiny, small \(did you mean "
                                             r"tiny\?\)$"):
        train(cfg_for(corpus, steps=1, model="Tiny"), tmp_path / "run", progress=False)

    def unreachable(*args, **kwargs):  # what transformers raises for a hub id with no network (none is used here)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.")

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", unreachable)
    monkeypatch.setattr(hub, "unreachable", lambda: None)  # the hub's name resolves, the fetch fails (rcond.hub: offline)
    with pytest.raises(ModelSpecError, match=r"^huge: not a local directory, and loading it as a hub id failed: We "
                                             r"couldn't connect .* files; expected a preset \(micro, tiny, small\), "
                                             r"a model directory or a hub id$"):
        train(cfg_for(corpus, steps=1, model="huge"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("edit,problem", [
    ({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}, r"GPT2LMHeadModel .*: \d+ missing \(e.g. "),
    ({"hidden_size": 16}, r"LlamaForCausalLM .*: \d+ of another shape \(e.g. model.embed_tokens.weight"),
])
def test_a_model_whose_config_does_not_fit_its_weights_is_not_trained(tmp_path, corpus, monkeypatch, edit, problem):
    """Not trained from random weights (missing tensors), nor a RuntimeError traceback (other shapes)."""
    from rcond.modeling import ModelDirError

    small_model(monkeypatch)
    train(cfg_for(corpus, steps=1), tmp_path / "first", progress=False)
    model_dir = tmp_path / "first" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ModelDirError, match=rf"^{model_dir}: the weights do not fit the {problem}"):
        train(cfg_for(corpus, steps=1, model=str(model_dir)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_first_steps_logged_losses_equal_a_float64_reference(tmp_path, corpus, monkeypatch):
    """Step 1's logged loss, on/off and per-bin losses and trained-token count, recomputed
    independently: the same initial model in float64, each packed document run on its own through
    the full logits, nll of input_ids[i+1] at position i weighted by loss_weight[i] and grouped by
    bin_ids[i] (-1: off). Catches a target shift, lost position ids (documents attending across a
    row), an init that ignores the seed, and per-bin numbers divided by the wrong weight."""
    from rcond.corpus import load
    from rcond.modeling import build_model
    from rcond.train import CorpusRows

    small_model(monkeypatch)
    seed, rows = 3, 6
    rec = train(cfg_for(corpus, steps=1, batch_size=3, grad_accum=2, seed=seed), tmp_path / "run",
                progress=False).log[0]
    dataset, scheme, tok = load(str(corpus))
    model = build_model("tiny", tok, scheme, seed=seed, max_position_embeddings=48).double().eval()
    order = CorpusRows(str(corpus), seed)  # the corpus's own seed (the run's seed + its index, 0)
    docs = []  # (input_ids, loss_weight, bin_ids) of every packed document, cut at position 0
    for r in [order.take() for _ in range(rows)]:
        row = dataset[r]
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        docs += [tuple(row[k][a:b] for k in ("input_ids", "loss_weight", "bin_ids")) for a, b in zip(starts, starts[1:])]
    longest = max(len(ids) for ids, _, _ in docs)
    batch = torch.tensor([list(ids) + [0] * (longest - len(ids)) for ids, _, _ in docs])  # right padding: causal
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=batch).logits, -1)  # [documents, longest, V]
    nll, weight, bins = [], [], []
    for d, (ids, lw, bin_ids) in enumerate(docs):
        assert lw[-1] == 0  # no target crosses a document boundary
        for i in range(len(ids) - 1):
            nll.append(-float(logp[d, i, ids[i + 1]]))
            weight.append(float(lw[i]))
            bins.append(int(bin_ids[i]))

    def mean(keep):
        w = sum(wi for wi, bi in zip(weight, bins) if keep(bi))
        return sum(wi * li for wi, li, bi in zip(weight, nll, bins) if keep(bi)) / w if w else None

    assert rec["trained_tokens"] == sum(weight)
    assert rec["loss"] == pytest.approx(mean(lambda b: True), rel=1e-5)
    assert rec["loss_on"] == pytest.approx(mean(lambda b: b >= 0), rel=1e-5)
    assert rec["loss_off"] == pytest.approx(mean(lambda b: b == -1), rel=1e-5)
    for k in range(4):
        assert rec[f"loss_bin_{k}"] == pytest.approx(mean(lambda b: b == k), rel=1e-5)


def test_the_logged_lr_follows_warmup_then_cosine_over_all_stages(tmp_path, corpus, monkeypatch):
    """Each record's lr is the one its step trained with: linear warmup (step 1 at half the peak with
    warmup 2), then cosine to min_lr_ratio * lr over the steps of every stage, not of the first only
    (hand-computed: cos(pi/4) = 0.70711). The run's result adds up the log: tokens trained, the
    last loss, and tokens/s over the step's batch_size x grad_accum x block_size slots."""
    small_model(monkeypatch)
    c = str(corpus)
    cfg = TrainConfig(stages=[Stage(corpora=[c], steps=3, name="a"), Stage(corpora=[c], steps=3, name="b")],
                      model="tiny", batch_size=2, grad_accum=2, warmup=2, lr=1e-2, min_lr_ratio=0.2, device="cpu")
    r = train(cfg, tmp_path / "run", progress=False)
    log = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    expected = [0.5, 1.0, 1.0, 0.2 + 0.4 * 1.70710678, 0.6, 0.2 + 0.4 * 0.29289322]
    assert [rec["lr"] for rec in log] == pytest.approx([1e-2 * f for f in expected], rel=1e-6)
    assert r.log == log and r.tokens == sum(rec["trained_tokens"] for rec in log) and r.last_loss == log[-1]["loss"]
    for rec in log:
        assert rec["tokens_per_s"] * rec["seconds"] == pytest.approx(2 * 2 * 48)


def test_a_warmup_longer_than_the_run_warns_with_the_lr_it_ends_at(tmp_path, corpus, monkeypatch, capsys):
    """Warmup 8 over a 3-step run: the lr rises all run (1/8, 2/8, 3/8 of the peak, from the log) and
    ends at 3/8 of it, which the warning gives (3e-3 * 3/8 = 0.001125, shown 0.00113); a warmup as long as the run
    reaches the peak on its last step and is not warned about, nor is a shorter one."""
    small_model(monkeypatch)
    train(cfg_for(corpus, steps=3, warmup=8), tmp_path / "long", progress=False)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and ("warning: a warmup of 8 steps is longer than the run's 3: the learning "
                                           "rate rises all run and ends at 0.00113, not the peak lr 0.003, and never "
                                           "decays; give --warmup 3 or fewer (warmup in a config file), or more "
                                           "steps") in err
    log = [json.loads(line) for line in open(tmp_path / "long" / "log.jsonl")]
    assert [rec["lr"] for rec in log] == pytest.approx([3e-3 * k / 8 for k in (1, 2, 3)], rel=1e-6)
    for warmup in (3, 0):
        train(cfg_for(corpus, steps=3, warmup=warmup), tmp_path / f"w{warmup}", progress=False)
        assert "warning" not in capsys.readouterr().err


def test_a_log_record_divides_each_loss_by_its_own_weight_and_leaves_empty_groups_out():
    """Hand-made step sums (loss 10 over weight 4; bins 0..2 with losses 3, 0, 5 over weights 1, 0, 2):
    loss 2.5, on 8/3, off (10 - 8) / (4 - 3), a bin with no tokens None (not 0, not nan); a step with
    no on-mode tokens has loss_on None, one with only on-mode tokens loss_off None."""
    import numpy as np

    from rcond.train import _log_record

    rec = _log_record(7, "s", np.array([10.0, 4.0, 3.0, 0.0, 5.0, 1.0, 0.0, 2.0]), 3, 1e-3, 0.5, 2.0, 100)
    assert rec == {"step": 7, "stage": "s", "loss": 2.5, "lr": 1e-3, "grad_norm": 0.5, "trained_tokens": 4.0,
                   "tokens_per_s": 50.0, "seconds": 2.0, "loss_on": pytest.approx(8 / 3), "loss_off": 2.0,
                   "loss_bin_0": 3.0, "loss_bin_1": None, "loss_bin_2": 2.5}
    off_only = _log_record(1, "s", np.array([6.0, 3.0, 0.0, 0.0, 0.0, 0.0]), 2, 1e-3, 0.5, 1.0, 10)
    assert off_only["loss_on"] is None and off_only["loss_off"] == 2.0 and off_only["loss_bin_0"] is None
    on_only = _log_record(1, "s", np.array([6.0, 3.0, 6.0, 0.0, 3.0, 0.0]), 2, 1e-3, 0.5, 1.0, 10)
    assert on_only["loss_off"] is None and on_only["loss_on"] == 2.0 and on_only["loss_bin_1"] is None
