"""LM mode end to end with a real (tiny, random) causal LM, a LoRA adapter and BM25."""

from __future__ import annotations

from pathlib import Path


from glossrec.config import ModelConfig
from glossrec.serve import Recommender, Request



def _save_adapter(run: Path, cfg_model: ModelConfig) -> None:
    from glossrec.config import LoraConfig
    from glossrec.models import apply_lora, load_model

    model, _ = load_model(cfg_model, trainable=True)
    apply_lora(model, LoraConfig(r=2, alpha=2)).save_pretrained(run / "adapter")


def test_auto_mode_is_lis_without_adapter_and_lm_with_one(lm_run: Path, tiny_model_config: ModelConfig) -> None:
    assert Recommender.from_run(lm_run).mode == "lis"
    _save_adapter(lm_run, tiny_model_config)
    rec = Recommender.from_run(lm_run)
    assert rec.mode == "lm"
    out = rec.recommend(["A2", "A9"], k=5)
    assert out.mode == "lm" and 1 <= len(out.queries) <= 3
    for item in out.items:
        assert item.queries and set(item.queries) <= set(out.queries)
        assert item.item_id not in {"A2", "A9"}


def test_lm_batch_is_one_model_call_and_prompts_fit_the_budget(lm_run: Path) -> None:
    rec = Recommender.from_run(lm_run, mode="lm")  # base model, no adapter
    gen = rec._generate.__self__  # type: ignore[union-attr]
    calls: list[int] = []
    real = gen.generate

    def spy(prompts: list[str]) -> list[list[str]]:
        calls.append(len(prompts))
        return real(prompts)

    rec._generate = spy
    outs = rec.recommend_many([Request(["A1", "A2"], 3), Request(["A4"], 3), Request([{"title": "x"}], 2)])
    assert calls == [3] and rec.generate_calls == 1
    assert all(not isinstance(o, Exception) for o in outs)
    # A history far over the token budget is cut from the left in whole items.
    long = ["A1", "A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9", "B1", "B2", "B3"] * 30
    rec.config.prompt.max_length = 160
    rec._builder = rec._prompt_builder(gen)
    prompt = rec._prompt([rec.catalog.text_of(rec.catalog.get(i)) for i in long])
    assert rec._builder.count(prompt) <= 160 - rec.config.generate.max_new_tokens
    assert prompt.endswith("### Next item:\n") and "Title: Tea tree oil acne spot treatment\n\n###" in prompt
