"""Training: label masking, loss modes, adapters round trip, early stopping, kill and resume."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from glossrec import weights
from glossrec.config import load_config
from glossrec.errors import ConfigError
from glossrec.models import load_model
from glossrec.prompts import PromptPair
from glossrec.train import (IGNORE, Encoded, ValidLosses, collate, encode_pairs, latest_checkpoint, subset,
                            train, train_from_config)

from .conftest import wait_for_checkpoint

HELPER_PATH = Path(__file__).parent / "train_helper.py"
_spec = importlib.util.spec_from_file_location("glossrec_train_helper", HELPER_PATH)
helper = importlib.util.module_from_spec(_spec)
assert _spec.loader is not None
_spec.loader.exec_module(helper)


@pytest.fixture(scope="module")
def tok(tiny_lm_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_lm_dir)


@pytest.fixture(autouse=True)
def _one_thread():
    # Deterministic float reductions and no oversubscription of a shared CPU.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_labels_masked_by_attention_not_pad_id(tok) -> None:
    eos = tok.eos_token_id
    assert tok.pad_token_id == eos  # like SmolLM2
    batch = collate([Encoded((5, 6, 7, eos)), Encoded((8, eos))], pad_id=eos)
    assert batch["input_ids"].tolist() == [[5, 6, 7, eos], [8, eos, eos, eos]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    # The EOS ending each text is a label; the padding (also EOS) is not.
    assert batch["labels"].tolist() == [[5, 6, 7, eos], [8, eos, IGNORE, IGNORE]]


def test_target_loss_masks_the_prompt(tok) -> None:
    pair = PromptPair("### Next item:\n", "Title: comb")
    full, = encode_pairs(tok, [pair], "full")
    target, = encode_pairs(tok, [pair], "target")
    p_ids = tok(pair.prompt)["input_ids"]
    t_ids = tok(pair.target, add_special_tokens=False)["input_ids"]
    assert list(full.input_ids) == p_ids + t_ids + [tok.eos_token_id]
    assert full.loss_start == 0 and target.loss_start == len(p_ids)
    labels = collate([target, Encoded((1,))], tok.eos_token_id)["labels"][0].tolist()
    assert labels == [IGNORE] * len(p_ids) + t_ids + [tok.eos_token_id]


def test_subset_is_reproducible_and_ordered() -> None:
    items = list(range(100))
    a = subset(items, 10, 3)
    assert a == subset(items, 10, 3) and a == sorted(a) and len(set(a)) == 10
    assert subset(items, None, 3) == items and subset(items, 500, 3) == items


def _logits(model, tok, text: str) -> torch.Tensor:
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        return model(**enc).logits


def test_train_save_load_gives_same_logits(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    data = helper.pairs(tok, 12)
    cfg = helper.config(tiny_lm_dir, max_steps=3, warmup_steps=0)
    result = train(cfg, tmp_path / "run", data[:8], data[8:])
    adapter = tmp_path / "run" / "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "glossrec_train.json"} <= {
        p.name for p in adapter.iterdir()}
    assert result.steps == 3
    summary = dataclasses.asdict(result)  # a JSON-able summary, never a copy of the model
    assert "model" not in summary and json.dumps(summary, default=str)
    assert json.loads((adapter / "adapter_config.json").read_text())[
        "base_model_name_or_path"] == str(tiny_lm_dir)
    text = data[0].text(tok.eos_token)
    loaded, _ = load_model(cfg.model, adapter_dir=adapter)
    base, _ = load_model(cfg.model)
    trained = _logits(result.model, tok, text)
    assert torch.allclose(trained, _logits(loaded, tok, text), atol=1e-5)
    assert not torch.allclose(trained, _logits(base, tok, text), atol=1e-3)
    merged, _ = load_model(cfg.model, adapter_dir=adapter, merge=True)
    assert torch.allclose(trained, _logits(merged, tok, text), atol=1e-4)
    rows = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    assert any("valid_loss" in r for r in rows)  # the last step is always validated


def test_early_stopping_keeps_best_adapter(tiny_lm_dir: Path, tok, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    losses = iter([3.0, 2.0, 2.5, 2.6, 2.7, 1.0, 1.0])
    monkeypatch.setattr("glossrec.train.checkpoints.evaluate_losses",
                        lambda *a, **k: ValidLosses(1, next(losses), 1))
    data = helper.pairs(tok, 10)
    cfg = helper.config(tiny_lm_dir, eval_steps=1, patience=3, epochs=5, save_steps=100)
    run = tmp_path / "run"
    result = train(cfg, run, data[:8], data[8:])
    assert result.stopped_early and result.steps == 5
    assert result.best_step == 2 and result.best_valid_loss == 2.0
    final = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    last = load_file(str(latest_checkpoint(run) / "adapter_model.safetensors"))
    assert latest_checkpoint(run).name == "step-0000005"
    assert any(not torch.equal(final[k], last[k]) for k in final)  # best != last
    best = load_file(str(run / "checkpoints" / "best-step-0000002" / "adapter_model.safetensors"))
    assert all(torch.equal(final[k], best[k]) for k in final)
    meta = json.loads((run / "adapter" / "glossrec_train.json").read_text())
    assert meta["best_step"] == 2 and meta["stopped_early"] is True


def test_kill_and_resume_continues_exactly(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    data = helper.pairs(tok, 24)
    cfg = helper.config(tiny_lm_dir)
    ref = train(cfg, tmp_path / "ref", data[:20], data[20:])
    assert ref.steps == 10

    run = tmp_path / "killed"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(HELPER_PATH), str(tiny_lm_dir), str(run), "1.0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_checkpoint(proc, run, 150, tail=2000)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (run / "adapter").exists()
    killed_at = int(latest_checkpoint(run).name.split("-")[1])
    assert 2 <= killed_at < 10

    resumed = train(cfg, run, data[:20], data[20:])
    assert resumed.resumed_from == killed_at and resumed.steps == 10
    steps = [r["step"] for r in resumed.history if "loss" in r]
    assert steps == list(range(1, 11))
    for a, b in zip(resumed.history, ref.history):
        assert a.keys() == b.keys()
        for key in ("loss", "valid_loss", "lr"):
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-8)
    logged = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [r["step"] for r in ref.history]
    w_ref = load_file(str(tmp_path / "ref" / "adapter" / "adapter_model.safetensors"))
    w_res = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    for k in w_ref:
        assert torch.allclose(w_ref[k], w_res[k], atol=1e-6), k


def test_resume_with_other_settings_is_refused(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    data = helper.pairs(tok, 8)
    train(helper.config(tiny_lm_dir, max_steps=2), tmp_path / "run", data)
    with pytest.raises(ConfigError, match="different settings.*learning_rate"):
        train(helper.config(tiny_lm_dir, max_steps=3, learning_rate=1e-3), tmp_path / "run", data)
    # A longer run with the same settings continues.
    more = train(helper.config(tiny_lm_dir, max_steps=3), tmp_path / "run", data)
    assert more.resumed_from == 2 and more.steps == 3


def _write_dataset(folder: Path) -> Path:
    folder.mkdir()
    items = [{"item_id": f"i{i}", "title": f"{helper.WORDS[i % 15]} {helper.WORDS[(i * 7) % 15]} {i}"}
             for i in range(30)]
    seqs = [{"user_id": f"u{u:02d}", "items": [f"i{(u + k * 3) % 30}" for k in range(3 + u % 4)]}
            for u in range(40)]
    (folder / "items.jsonl").write_text("".join(json.dumps(x) + "\n" for x in items))
    (folder / "sequences.jsonl").write_text("".join(json.dumps(x) + "\n" for x in seqs))
    return folder


def test_cli_trains_writes_config_and_resumes(tiny_lm_dir: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from glossrec.cli import main

    data = _write_dataset(tmp_path / "ds")
    conf = tmp_path / "c.toml"
    conf.write_text('[train]\nbatch_size = 2\ngrad_accum = 1\nwarmup_steps = 0\nbf16 = false\n'
                    'save_steps = 1\n\n[lora]\nr = 2\nalpha = 4\n')
    out = tmp_path / "run"
    argv = ["glossrec", "train", "--config", str(conf), "--out", str(out), "--max-steps", "2",
            "--data", str(data), "--model", str(tiny_lm_dir)]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    saved = load_config(out / "config.toml")
    assert saved.train.max_steps == 2 and saved.model.name == str(tiny_lm_dir)
    assert saved.data.path == data and saved.lora.r == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "trained 2 steps" in capsys.readouterr().out
    # No --config: the run folder's own config is used, and training resumes.
    monkeypatch.setattr(sys, "argv", ["glossrec", "train", "--out", str(out), "--max-steps", "3"])
    main()
    captured = capsys.readouterr()
    assert "resuming from" in captured.err and "trained 3 steps" in captured.out


def test_cli_without_data_is_a_one_line_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys) -> None:
    from glossrec.cli import main

    monkeypatch.setattr(sys, "argv", ["glossrec", "train", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2
    assert "data.path is not set" in capsys.readouterr().err


def test_train_from_config_needs_data(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="data.path"):
        train_from_config(load_config(), tmp_path)


def test_cpu_bf16_default_needs_native_support(monkeypatch: pytest.MonkeyPatch) -> None:
    from glossrec.config import TrainConfig
    from glossrec.train.optim import _use_bf16

    monkeypatch.setattr("glossrec.train.optim.cpu_has_native_bf16", lambda: False)
    assert _use_bf16(TrainConfig(), "cpu") is False  # emulated bf16 is ~8x slower here
    assert _use_bf16(TrainConfig(bf16=True), "cpu") is True
    monkeypatch.setattr("glossrec.train.optim.cpu_has_native_bf16", lambda: True)
    assert _use_bf16(TrainConfig(), "cpu") is True
    assert _use_bf16(TrainConfig(bf16=False), "cpu") is False


def test_gradient_checkpointing_gives_the_same_training(tiny_lm_dir: Path, tok,
                                                        tmp_path: Path) -> None:
    data = helper.pairs(tok, 8)
    plain = train(helper.config(tiny_lm_dir, max_steps=2), tmp_path / "a", data)
    ckpt = train(helper.config(tiny_lm_dir, max_steps=2, gradient_checkpointing=True),
                 tmp_path / "b", data)
    assert [r["loss"] for r in ckpt.history] == pytest.approx([r["loss"] for r in plain.history],
                                                                rel=1e-5)


@pytest.mark.parametrize("loss", ["full", "target"])
def test_label_position_loss_equals_full_logit_loss(tiny_lm_dir: Path, tok, loss: str) -> None:
    from glossrec.train import loss_sum

    model, _ = load_model(helper.config(tiny_lm_dir).model, trainable=True)
    data = encode_pairs(tok, helper.pairs(tok, 6), loss)
    batch = collate(data, tok.eos_token_id)  # different lengths: right padding in the batch
    assert batch["attention_mask"].min() == 0  # padding is really there
    # The reference: full-vocabulary logits at every position, padding masked.
    full = loss_sum(model, batch, "cpu", label_positions=False, causal_only=False)
    for positions, causal in ((True, True), (True, False), (False, True)):
        fast = loss_sum(model, batch, "cpu", label_positions=positions, causal_only=causal)
        assert float(fast) == pytest.approx(float(full), rel=1e-5)
    # The gradients agree as well (what training actually uses).
    grads = []
    for positions in (True, False):
        model.zero_grad()
        loss_sum(model, batch, "cpu", label_positions=positions, causal_only=positions).backward()
        grads.append(model.model.layers[0].mlp.up_proj.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_length_grouped_batches_are_a_shuffled_partition() -> None:
    from glossrec.train.batching import _epoch_batches

    lengths = [(i * 37) % 101 for i in range(1000)]
    batches = _epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(1000))
    assert batches == _epoch_batches(lengths, 4, seed=1, epoch=0, group_by_length=True)
    assert batches != _epoch_batches(lengths, 4, seed=1, epoch=1, group_by_length=True)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches)
    plain = _epoch_batches(lengths, 4, seed=1, epoch=0)
    plain_spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in plain)
    assert spread * 10 < plain_spread  # far less padding than random batches


def test_init_adapter_continues_training(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    data = helper.pairs(tok, 12)
    first = train(helper.config(tiny_lm_dir, max_steps=2, warmup_steps=0), tmp_path / "a",
                  data[:8], data[8:])
    # Continue from the first run's adapter: the starting point is its weights, not a fresh
    # adapter, so the first validation before any step equals the first run's final loss.
    cfg = helper.config(tiny_lm_dir, max_steps=1, warmup_steps=0,
                        init_adapter=str(first.adapter_dir), learning_rate=1e-12)
    second = train(cfg, tmp_path / "b", data[:8], data[8:])
    valid = [r["valid_loss"] for r in second.history if "valid_loss" in r]
    assert valid[0] == pytest.approx(first.best_valid_loss, rel=1e-4)
    meta = json.loads((second.adapter_dir / "glossrec_train.json").read_text())
    assert meta["examples_seen"] == 4 and meta["examples_seen_total"] == 12
    bad = helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(first.adapter_dir))
    bad = bad.model_copy(update={"lora": bad.lora.model_copy(update={"r": 8})})
    with pytest.raises(ConfigError, match="init_adapter"):
        train(bad, tmp_path / "c", data[:8], data[8:])


def test_full_fine_tuning_saves_a_loadable_model(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    data = helper.pairs(tok, 10)
    cfg = helper.config(tiny_lm_dir, max_steps=2, warmup_steps=0, method="full",
                        learning_rate=1e-3)
    result = train(cfg, tmp_path / "run", data[:8], data[8:])
    names = {p.name for p in result.adapter_dir.iterdir()}
    assert {"model.safetensors", "config.json"} <= names and "adapter_config.json" not in names
    text = data[0].text(tok.eos_token)
    loaded, _ = load_model(cfg.model, adapter_dir=result.adapter_dir)
    base, _ = load_model(cfg.model)
    trained = _logits(result.model, tok, text)
    assert torch.allclose(trained, _logits(loaded, tok, text), atol=1e-5)
    assert not torch.allclose(trained, _logits(base, tok, text), atol=1e-3)


def test_constant_schedule_extends_over_runs(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    data = helper.pairs(tok, 12)
    run = tmp_path / "run"
    kw = dict(warmup_steps=1, schedule="constant", save_steps=1, learning_rate=1e-3)
    train(helper.config(tiny_lm_dir, max_steps=2, **kw), run, data[:8], data[8:])
    more = train(helper.config(tiny_lm_dir, max_steps=4, **kw), run, data[:8], data[8:])
    steps = [r for r in more.history if "loss" in r]
    assert more.resumed_from == 2 and [r["step"] for r in steps] == [1, 2, 3, 4]
    assert [r["lr"] for r in steps] == pytest.approx([0.0, 1e-3, 1e-3, 1e-3])


def test_micro_batches_split_by_tokens_give_the_same_training(tiny_lm_dir: Path, tok,
                                                              tmp_path: Path) -> None:
    from glossrec.train.batching import _split_by_tokens

    lengths = [10, 50, 20, 40]
    parts = _split_by_tokens([0, 1, 2, 3], lengths, cap=80)
    assert sorted(i for p in parts for i in p) == [0, 1, 2, 3]
    assert all(len(p) == 1 or len(p) * max(lengths[i] for i in p) <= 80 for p in parts)
    assert _split_by_tokens([1], lengths, cap=8) == [[1]]  # one text always fits
    data = helper.pairs(tok, 8)
    whole = train(helper.config(tiny_lm_dir, max_steps=2, max_batch_tokens=None), tmp_path / "a", data)
    split = train(helper.config(tiny_lm_dir, max_steps=2, max_batch_tokens=40), tmp_path / "b", data)
    assert [r["loss"] for r in split.history] == pytest.approx([r["loss"] for r in whole.history],
                                                                rel=1e-5)


def test_report_to_tensorboard_logs_every_step(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = helper.pairs(tok, 12)
    res = train(helper.config(tiny_lm_dir, epochs=1, report_to=["tensorboard"]), tmp_path / "tb",
                data[:10], data[10:])
    acc = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    logged = [r["loss"] for r in res.history if "loss" in r]
    assert losses == pytest.approx(logged, rel=1e-6) and len(losses) == res.steps
    assert [e.step for e in acc.Scalars("train/valid_loss")] == [r["step"] for r in res.history if "valid_loss" in r]


def test_start_examples_continues_the_data_order(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    # A run continued from an adapter with start_examples = the examples that adapter saw takes
    # the batch the one long run would have taken next: same weights, same batch, same loss.
    data = helper.pairs(tok, 16)
    kw = dict(warmup_steps=0, schedule="constant", learning_rate=1e-3)
    whole = train(helper.config(tiny_lm_dir, max_steps=3, **kw), tmp_path / "whole", data)
    first = train(helper.config(tiny_lm_dir, max_steps=2, **kw), tmp_path / "first", data)
    cont = train(helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(first.adapter_dir),
                               start_examples=8, **kw), tmp_path / "cont", data)
    replay = train(helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(first.adapter_dir),
                                 **kw), tmp_path / "replay", data)
    assert cont.history[0]["loss"] == pytest.approx(whole.history[2]["loss"], rel=1e-5)
    assert replay.history[0]["loss"] != pytest.approx(whole.history[2]["loss"], rel=1e-5)
    # Past an epoch (16 examples, 4 steps): the next epoch's order, where the long run is.
    longer = train(helper.config(tiny_lm_dir, max_steps=6, **kw), tmp_path / "longer", data)
    five = train(helper.config(tiny_lm_dir, max_steps=5, **kw), tmp_path / "five", data)
    sixth = train(helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(five.adapter_dir),
                                start_examples=20, **kw), tmp_path / "sixth", data)
    assert longer.history[4]["epoch"] > 1 and sixth.history[0]["epoch"] == longer.history[5]["epoch"]
    assert sixth.history[0]["loss"] == pytest.approx(longer.history[5]["loss"], rel=1e-5)


def test_a_start_off_the_adapters_examples_is_warned(tiny_lm_dir: Path, tok, tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    # The adapter saw 8 examples: starting at 8 continues its order quietly; starting at 12
    # skips 4 of them, which the run says, naming the value that would continue.
    data = helper.pairs(tok, 16)
    kw = dict(warmup_steps=0, schedule="constant", learning_rate=1e-3)
    first = train(helper.config(tiny_lm_dir, max_steps=2, **kw), tmp_path / "first", data)
    with caplog.at_level(logging.WARNING, logger="glossrec"):
        train(helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(first.adapter_dir),
                            start_examples=8, **kw), tmp_path / "on", data)
        assert "start_examples" not in caplog.text
        train(helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(first.adapter_dir),
                            start_examples=12, **kw), tmp_path / "off", data)
    assert "skips 4 examples" in caplog.text and "train.start_examples = 8" in caplog.text


def test_start_examples_counts_short_micro_batches(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    # 15 examples in micro-batches of 2: each epoch has one batch of 1, anywhere in the order
    # (group_by_length shuffles the cut batches). A continuation that starts at the examples its
    # adapter saw (examples_seen_total) must take the very batch the long run took next, not
    # one counted as if every batch were full.
    data = helper.pairs(tok, 15)
    kw = dict(warmup_steps=0, schedule="constant", learning_rate=1e-3, group_by_length=True)
    whole = train(helper.config(tiny_lm_dir, max_steps=8, **kw), tmp_path / "whole", data)
    sizes = [r["examples"] for r in whole.history if "loss" in r]
    # a stop whose place in its epoch is odd: the batch of 1 is behind it, where the old
    # rounding (examples // batch_size) would have started one batch early
    k = next(j for j in range(1, 8) if sum(sizes[:j]) % 15 % 2)
    seen = sum(sizes[:k])
    first = train(helper.config(tiny_lm_dir, max_steps=k, **kw), tmp_path / "first", data)
    cont = train(helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(first.adapter_dir),
                               start_examples=seen, **kw), tmp_path / "cont", data)
    steps = [r for r in whole.history if "loss" in r]
    assert cont.history[0]["examples"] == steps[k]["examples"]
    assert cont.history[0]["loss"] == pytest.approx(steps[k]["loss"], rel=1e-5)


def test_every_checkpoint_is_a_whole_weights_folder(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    """A checkpoint carries glossrec_train.json as the final adapter does: shippable, and a
    starting point whose examples a continuation adds to, before its run has ended."""
    data = helper.pairs(tok, 12)
    run = tmp_path / "run"
    res = train(helper.config(tiny_lm_dir, max_steps=4, eval_steps=1, save_steps=2),
                run, data[:8], data[8:])
    final = json.loads((res.adapter_dir / "glossrec_train.json").read_text())
    last = json.loads((latest_checkpoint(run) / "glossrec_train.json").read_text())
    assert last == final and final["steps"] == 4 and final["examples_seen"] == 16
    best = next(p for p in (run / "checkpoints").iterdir() if p.name.startswith("best-"))
    info = json.loads((best / "glossrec_train.json").read_text())
    assert info["steps"] == int(best.name.rsplit("-", 1)[1]) == res.best_step
    assert info["examples_seen"] == 4 * info["steps"]
    cont = train(helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(best)),
                 tmp_path / "cont", data[:8], data[8:])
    more = json.loads((cont.adapter_dir / "glossrec_train.json").read_text())
    assert more["examples_seen_total"] == info["examples_seen"] + 4


def test_valid_loss_target_scores_the_next_item_only(tiny_lm_dir: Path, tok, tmp_path: Path) -> None:
    """train.valid_loss = "target": a whole-text run is validated on the next item's tokens,
    the figure a target-only run reports, so the two can be compared."""
    data = helper.pairs(tok, 12)
    still = dict(max_steps=1, warmup_steps=0, learning_rate=1e-12)

    def valid(**kw: object) -> float:
        run = train(helper.config(tiny_lm_dir, **still, **kw), tmp_path / str(len(list(tmp_path.iterdir()))),
                    data[:8], data[8:])
        return [r["valid_loss"] for r in run.history if "valid_loss" in r][-1]

    target = valid(loss="target")
    assert valid(loss="full", valid_loss="target") == pytest.approx(target, rel=1e-5)
    assert valid(loss="full") != pytest.approx(target, rel=1e-3)


def test_whole_text_continuation_resumes_onto_the_same_curve(tiny_lm_dir: Path, tok,
                                                              tmp_path: Path) -> None:
    """A whole-text stretch continued from a target-only adapter, stopped and extended in the
    same run directory, gives the curve of the same stretch run in one go."""
    data = helper.pairs(tok, 16)
    first = train(helper.config(tiny_lm_dir, max_steps=2, warmup_steps=0, loss="target"),
                  tmp_path / "first", data[:12], data[12:])
    kw = dict(loss="full", valid_loss="target", init_adapter=str(first.adapter_dir),
              start_examples=8, warmup_steps=1, schedule="constant", save_steps=1, eval_steps=1,
              learning_rate=1e-3)
    ref = train(helper.config(tiny_lm_dir, max_steps=4, **kw), tmp_path / "ref", data[:12], data[12:])
    run = tmp_path / "run"
    train(helper.config(tiny_lm_dir, max_steps=2, **kw), run, data[:12], data[12:])
    # The starting weights retired meanwhile (their record kept): a resume loads its own
    # checkpoint and needs only the record's totals.
    (first.adapter_dir / weights.ADAPTER_WEIGHTS).unlink()
    more = train(helper.config(tiny_lm_dir, max_steps=4, **kw), run, data[:12], data[12:])
    assert more.resumed_from == 2
    meta = json.loads((more.adapter_dir / weights.TRAIN_INFO).read_text())
    assert meta["examples_seen_total"] == meta["examples_seen"] + 8
    for key in ("loss", "valid_loss"):
        assert [r[key] for r in more.history if key in r] == pytest.approx(
            [r[key] for r in ref.history if key in r], rel=1e-5)


def test_the_paper_optimizer_where_bitsandbytes_runs_it(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    from glossrec.config import TrainConfig
    from glossrec.train.optim import _optimizer

    params = [torch.nn.Parameter(torch.zeros(8))]
    # Full-precision CPU training keeps torch AdamW; 4-bit QLoRA takes the paper's 8-bit AdamW.
    assert type(_optimizer(params, TrainConfig(), "cpu")) is torch.optim.AdamW
    monkeypatch.setattr("glossrec.models.bitsandbytes_missing", lambda feature, device: None)
    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes as bnb

        # Paging is CUDA unified memory: on a CPU the same update, unpaged.
        assert type(_optimizer(params, TrainConfig(), "cpu", four_bit=True)) is bnb.optim.AdamW8bit
    # Where bitsandbytes cannot run it, torch AdamW, and the log says why.
    monkeypatch.setattr("glossrec.models.bitsandbytes_missing",
                        lambda feature, device: "8-bit AdamW on cpu need bitsandbytes >= 0.50.0")
    with caplog.at_level("WARNING", logger="glossrec.train"):
        opt = _optimizer(params, TrainConfig(optim="adamw_8bit"), "cpu")
    assert type(opt) is torch.optim.AdamW
    assert "train.optim adamw_8bit: 8-bit AdamW on cpu need bitsandbytes >= 0.50.0; training " \
           "with torch AdamW instead" in caplog.text


def test_full_weights_init_and_model_weights_is_not_a_starting_point(
        tiny_lm_dir: Path, tok, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = helper.pairs(tok, 12)
    full = dict(method="full", warmup_steps=0, learning_rate=1e-3)
    first = train(helper.config(tiny_lm_dir, max_steps=2, **full), tmp_path / "a",
                  data[:8], data[8:])
    # train.init_adapter naming full weights: training starts from them (the first validation
    # before any step of a negligible learning rate equals the first run's best loss).
    cont = helper.config(tiny_lm_dir, max_steps=1, init_adapter=str(first.adapter_dir),
                         **{**full, "learning_rate": 1e-12})
    second = train(cont, tmp_path / "b", data[:8], data[8:])
    valid = [r["valid_loss"] for r in second.history if "valid_loss" in r]
    assert valid[0] == pytest.approx(first.best_valid_loss, rel=1e-4)
    # model.weights is what a run uses instead of training, never where training starts.
    fresh = helper.config(tiny_lm_dir, max_steps=1, **{**full, "learning_rate": 1e-12})
    fresh = fresh.model_copy(update={"model": fresh.model.model_copy(
        update={"weights": str(first.adapter_dir)})})
    with caplog.at_level("WARNING", logger="glossrec.train"):
        third = train(fresh, tmp_path / "c", data[:8], data[8:])
    assert "is not where training starts" in caplog.text
    valid = [r["valid_loss"] for r in third.history if "valid_loss" in r]
    assert valid[0] != pytest.approx(first.best_valid_loss, rel=1e-4)


def test_validation_loss_of_an_adapter_is_the_loss_its_run_recorded(tiny_lm_dir: Path,
                                                                     tmp_path: Path) -> None:
    """validation_loss scores a run's starting weights on the run's own validation users and
    loss, without training: for the adapter a run kept, the loss the run recorded for it, and
    validation_losses its first-token part too."""
    from glossrec.train import validation_loss, validation_losses

    sample = Path(__file__).resolve().parents[1] / "data" / "beauty-sample"
    cfg = helper.config(tiny_lm_dir, max_steps=2, eval_steps=2, max_valid_examples=8,
                        valid_loss="target", loss="full", valid_first_tokens=3).updated(
        data={"path": str(sample)}, prompt={"max_length": 512, "max_history_items": 3})
    res = train_from_config(cfg, tmp_path / "run")
    recorded = [r["valid_loss"] for r in res.history if "valid_loss" in r]
    assert len(recorded) == 1
    again = cfg.updated(train={"init_adapter": str(res.adapter_dir)})
    assert validation_loss(again) == pytest.approx(recorded[0], rel=1e-5)
    split = validation_losses(again, first_tokens=3)
    first = [r["valid_loss_first"] for r in res.history if "valid_loss" in r]
    assert (split.loss, split.first) == pytest.approx((recorded[0], first[0]), rel=1e-5)
    assert split.texts == 8
    assert validation_loss(cfg) != pytest.approx(recorded[0], rel=1e-3)  # the base model's


def test_training_split_losses_score_the_texts_the_run_trained_on(tiny_lm_dir: Path,
                                                                   tmp_path: Path) -> None:
    """validation_losses(split="train") scores training texts drawn as train() draws them: a
    run that fine-tuned all weights for many epochs on 4 texts has learned those texts' last items far better than
    the validation users' next items, and before training the two splits score alike."""
    from glossrec.train import validation_losses

    sample = Path(__file__).resolve().parents[1] / "data" / "beauty-sample"
    cfg = helper.config(tiny_lm_dir, max_examples=4, max_valid_examples=4, epochs=30,
                        batch_size=4, grad_accum=1, learning_rate=1e-2, eval_steps=1000,
                        valid_loss="target", loss="target", method="full").updated(
        data={"path": str(sample)}, prompt={"max_length": 512, "max_history_items": 3})
    res = train_from_config(cfg, tmp_path / "run")
    trained = cfg.updated(train={"init_adapter": str(res.adapter_dir)})
    seen, unseen = (validation_losses(trained, split=s) for s in ("train", "valid"))
    base_seen, base_unseen = (validation_losses(cfg, split=s).loss for s in ("train", "valid"))
    assert seen.texts == unseen.texts == 4
    assert seen.loss < 0.6 * base_seen
    assert seen.loss < 0.6 * unseen.loss
    assert abs(base_seen - base_unseen) < 0.2 * base_unseen


def test_frozen_linears_to_bf16_casts_only_the_frozen_base(tiny_lm_dir: Path) -> None:
    from glossrec.config import LoraConfig
    from glossrec.models import apply_lora
    from glossrec.train.optim import frozen_linears_to_bf16

    model, _ = load_model(helper.config(tiny_lm_dir).model, trainable=True, device="cpu")
    model = apply_lora(model, LoraConfig(r=4, alpha=8), seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    restore = frozen_linears_to_bf16(model)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"] == torch.bfloat16
    assert all(dtypes[n] == torch.float32 for n in dtypes if "lora_" in n)  # the optimizer's
    assert dtypes["base_model.model.model.embed_tokens.weight"] == torch.float32  # tied head
    assert sum(d == torch.bfloat16 for d in dtypes.values()) == 7 * model.config.num_hidden_layers
    restore()
    for n, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p.detach(), before[n]), n


def test_bf16_frozen_weights_train_the_curve_autocast_trains(tiny_lm_dir: Path, tok,
                                                             tmp_path: Path) -> None:
    """The weights cast once round as autocast's cast at every call does: the same losses, and
    the trained model comes back with its float32 base weights."""
    data = helper.pairs(tok, 8)
    cast = train(helper.config(tiny_lm_dir, max_steps=3, bf16=True, bf16_weights=False),
                 tmp_path / "a", data)
    kept = train(helper.config(tiny_lm_dir, max_steps=3, bf16=True), tmp_path / "b", data)
    fp32 = train(helper.config(tiny_lm_dir, max_steps=3), tmp_path / "c", data)
    losses = [[r["loss"] for r in run.history] for run in (cast, kept, fp32)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert losses[2] != pytest.approx(losses[0], rel=1e-5)  # bf16 does change the numbers
    assert {p.dtype for p in kept.model.parameters()} == {torch.float32}


def test_kept_or_trimmed_memory_trains_the_same(tiny_lm_dir: Path, tok, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from glossrec.train import batching

    data = helper.pairs(tok, 8)
    kept = train(helper.config(tiny_lm_dir, max_steps=2), tmp_path / "a", data)
    trimmed = train(helper.config(tiny_lm_dir, max_steps=2, trim_memory=True), tmp_path / "b", data)
    assert [r["loss"] for r in trimmed.history] == pytest.approx([r["loss"] for r in kept.history],
                                                                  rel=1e-6)
    monkeypatch.setattr(batching, "_glibc", lambda: None)  # no glibc: nothing to set
    with batching.kept_freed_memory():
        pass


def test_first_label_tokens_are_each_texts_first_k() -> None:
    from glossrec.train import first_label_tokens

    labels = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    labels[0, :2] = IGNORE  # target from position 2, no padding
    labels[1, :4] = IGNORE  # target from position 4
    labels[1, 5:] = IGNORE  # then padding
    mask = first_label_tokens(labels, 2)  # over labels[:, 1:]
    assert mask.tolist() == [[False, True, True, False, False],
                             [False, False, False, True, False]]


def test_validation_records_the_next_items_first_tokens(tiny_lm_dir: Path, tok,
                                                        tmp_path: Path) -> None:
    from glossrec.train import evaluate_losses, loss_sum, token_losses

    data = helper.pairs(tok, 12)
    run = train(helper.config(tiny_lm_dir, max_steps=2, eval_steps=1, valid_loss="target",
                              valid_first_tokens=2), tmp_path / "run", data[:8], data[8:])
    valid = [r for r in run.history if "valid_loss" in r]
    assert len(valid) == 2 and all(r["valid_loss_first"] != r["valid_loss"] for r in valid)
    enc = encode_pairs(tok, data[8:], "target")
    pad = tok.pad_token_id
    everything = evaluate_losses(run.model, enc, pad, 2, "cpu", False, first_tokens=10_000)
    assert everything.first == pytest.approx(everything.loss, rel=1e-6)  # every token is "first"
    unsplit = evaluate_losses(run.model, enc, pad, 2, "cpu", False)
    assert unsplit.first is None and unsplit.rest is None
    kept = [r for r in valid if r["best"]][-1]  # the weights train() ends with
    assert unsplit.loss == pytest.approx(kept["valid_loss"], rel=1e-5)
    split = evaluate_losses(run.model, enc, pad, 2, "cpu", False, first_tokens=2)
    assert split.first == pytest.approx(kept["valid_loss_first"], rel=1e-5)
    assert split.texts == len(enc) and split.first_count == 2 * len(enc)
    # the two parts are the whole: token-weighted, first and rest give back the mean
    rest_count = split.tokens - split.first_count
    assert (split.first * split.first_count + split.rest * rest_count) / split.tokens == \
        pytest.approx(split.loss, rel=1e-6)
    assert split.rest != pytest.approx(split.first, rel=1e-3)
    batch = collate(enc, pad)
    with torch.no_grad():
        assert float(token_losses(run.model, batch, "cpu").sum()) == pytest.approx(
            float(loss_sum(run.model, batch, "cpu")), rel=1e-6)
    with pytest.raises(ValueError, match="valid_first_tokens"):
        helper.config(tiny_lm_dir, loss="full", valid_first_tokens=3)


# ---- train.head_tokens / head_weight: the first tokens of each item weigh more -----------------


def test_heads_mark_the_first_token_of_every_item(tok) -> None:
    pair = helper.pairs(tok, 1)[0]
    enc, = encode_pairs(tok, [pair], "full", heads=True)
    assert len(enc.heads) == 4  # three history items and the target
    assert enc.heads[-1] == len(tok(pair.prompt)["input_ids"])
    ids = list(enc.input_ids)
    for h in enc.heads:
        assert tok.decode(ids[h:]).startswith("Title:")
        assert not tok.decode(ids[h - 1:h]).endswith("Title")  # the item's first token, not later
    # Cut from the left (a text longer than max_length): the heads move with the tokens and
    # those cut away are gone.
    cut, = encode_pairs(tok, [pair], "full", max_length=len(ids) - enc.heads[1] - 1, heads=True)
    drop = len(ids) - len(cut.input_ids)
    assert cut.heads == tuple(h - drop for h in enc.heads[2:])
    assert encode_pairs(tok, [pair], "full")[0].heads == ()


def test_head_weight_weighs_each_items_first_tokens(tiny_lm_dir: Path, tok) -> None:
    from glossrec.train.loss import label_weight, loss_sum, n_label_tokens, token_losses

    data = encode_pairs(tok, helper.pairs(tok, 3), "full", heads=True)
    plain = collate(data, tok.eos_token_id)
    weighted = collate(data, tok.eos_token_id, head_tokens=2, head_weight=3.0)
    assert "weights" not in plain and "weights" not in collate(data, tok.eos_token_id, 2, 1.0)
    w = weighted["weights"]
    assert w.shape == weighted["labels"][:, 1:].shape
    # Label j (predicted from position j - 1) sits at column j - 1: each head and the token after.
    expected = torch.ones_like(w)
    for i, e in enumerate(data):
        for h in e.heads:
            expected[i, h - 1:h + 1] = 3.0
    assert torch.equal(w, expected)
    heads = sum(2 * len(e.heads) for e in data)
    assert label_weight(weighted) == n_label_tokens(plain) + 2.0 * heads
    assert label_weight(plain) == n_label_tokens(plain)
    model, _ = load_model(helper.config(tiny_lm_dir).model)
    with torch.no_grad():
        ce = token_losses(model, plain, "cpu")
        assert torch.allclose(loss_sum(model, weighted, "cpu"), (ce * expected).sum())
        assert torch.allclose(loss_sum(model, plain, "cpu"), ce.sum())


def test_head_weight_trains_another_model_and_needs_head_tokens(tiny_lm_dir: Path, tok,
                                                                tmp_path: Path) -> None:
    data = helper.pairs(tok, 10)
    runs = {}
    for name, extra in {"plain": {}, "heads": {"head_tokens": 3, "head_weight": 4.0}}.items():
        cfg = helper.config(tiny_lm_dir, max_steps=2, warmup_steps=0, **extra)
        train(cfg, tmp_path / name, data[:8], data[8:])
        runs[name] = load_file(tmp_path / name / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(runs["plain"][k], runs["heads"][k]) for k in runs["plain"])
    with pytest.raises(ValueError, match="head_tokens"):
        helper.config(tiny_lm_dir, head_weight=4.0)
