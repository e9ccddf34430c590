"""The embedded moving-shapes model: its data, its prompt vocabulary, its training script, and
that the shipped weights really learned (measured on the pixels of generated clips)."""

import pytest
import torch

from cachekit import CachekitError, zoo
from cachekit.zoo import moving_shapes as world
from cachekit.zoo import train, weights


def test_rendered_clips_pass_every_judge_and_damaged_ones_fail():
    clips, prompts = world.random_batch(32, torch.Generator().manual_seed(0))
    assert world.rates(clips, prompts) == {"colour": 1.0, "crisp": 1.0, "coherent": 1.0, "direction": 1.0}
    speckle = torch.where(torch.rand(clips.shape[0], 1, *clips.shape[2:]) < 0.12, clips.amax(dim=(2, 3, 4), keepdim=True), -1.0)
    assert world.rates(speckle, prompts)["crisp"] == 0.0
    smudge = torch.nn.functional.avg_pool3d(clips, (1, 5, 5), 1, (0, 2, 2), count_include_pad=False)
    assert world.rates(smudge, prompts)["crisp"] == 0.0
    still = clips[:, :, :1].expand_as(clips)
    assert world.rates(still, prompts)["direction"] == 0.0 and world.rates(still, prompts)["coherent"] == 0.0
    backwards = clips.flip(2)
    assert world.rates(backwards, prompts)["direction"] == 0.0


def test_prompts_map_to_embeddings_and_unknown_words_list_the_vocabulary():
    embeds = weights.prompt_embeds(["red square moving left", "Blue, moving up", ""])
    assert embeds.shape == (3, 1, world.EMBED_DIM)
    assert torch.equal(embeds[2], torch.zeros_like(embeds[2]))  # the empty prompt is the unconditional one
    table = weights._read(weights.WEIGHTS)[0]["words.weight"]
    red, left = (table[world.VOCABULARY.index(w) + 1] for w in ("red", "left"))
    assert torch.allclose(weights.prompt_embeds(["left red"])[0, 0], red + left)
    assert torch.equal(weights.prompt_embeds(["left red"]), weights.prompt_embeds(["the red square moving left"]))
    with pytest.raises(CachekitError, match=r"unknown word\(s\) 'purple', 'circle'.*knows: red, green, blue, yellow, left"):
        weights.prompt_embeds(["purple circle moving left"])
    with pytest.raises(CachekitError, match="no embedded model 'nope'; available: moving-shapes"):
        zoo.load("nope")


def test_load_gives_a_latte_pipeline_of_its_own_class():
    from diffusers import DDIMScheduler, LattePipeline, LatteTransformer3DModel

    pipe = zoo.load("moving-shapes")
    assert type(pipe) is LattePipeline and type(pipe.transformer) is LatteTransformer3DModel
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.prediction_type == "v_prediction"
    assert weights.WEIGHTS.stat().st_size <= 20 * 2**20
    assert weights.info()["training_steps"] > 0


@pytest.fixture(scope="module")
def samples():
    """Every trained prompt at two seeds, 30 steps, guidance 1.5."""
    pipe = zoo.load()
    prompts = world.prompts()
    clips = torch.cat([pipe(**weights.call_kwargs(prompts, steps=30, seed=seed)).frames for seed in (0, 1)])
    return clips, prompts * 2


def test_the_model_learned_colour_a_crisp_object_and_its_motion(samples):
    """docs/moving-shapes.md measures 100% colour, crisp and direction, 97% coherent on these clips."""
    rates = world.rates(*samples)
    assert all(rates[judge] >= 0.9 for judge in ("colour", "crisp", "coherent", "direction")), rates
    assert torch.isfinite(samples[0]).all()


def test_training_is_seeded_and_resumes_exactly(tmp_path):
    common = ["--steps", "4", "--batch", "2", "--warmup", "2", "--checkpoint-minutes", "100"]
    train.main(["--out", str(tmp_path / "straight"), *common])
    train.main(["--out", str(tmp_path / "resumed"), *common, "--until", "2"])
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["step"] == 2
    train.main(["--out", str(tmp_path / "resumed"), *common])
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=False)
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)
    assert resumed["step"] == straight["step"] == 4
    assert all(torch.equal(a, b) for a, b in zip(straight["ema"], resumed["ema"]))
    assert all(torch.equal(straight["transformer"][k], resumed["transformer"][k]) for k in straight["transformer"])
    exported = tmp_path / "w.safetensors"
    train.main(["--out", str(tmp_path / "straight"), "--export", "--weights", str(exported)])
    assert weights.info(exported)["training_steps"] == 4
    assert type(weights.build_pipeline(exported).transformer).__name__ == "LatteTransformer3DModel"


def test_samples_command_writes_the_grid_and_prints_the_rates(tmp_path, capsys):
    from cachekit.zoo import samples

    rates = samples.main(["--out", str(tmp_path / "grid.png"), "--steps", "4", "--seeds", "3"])
    assert set(rates) == {"colour", "crisp", "coherent", "direction"} and all(0 <= v <= 1 for v in rates.values())
    assert "16 prompts x seeds [3], 4 steps" in capsys.readouterr().out
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_zoo_is_reachable_as_the_readme_writes_it():
    """`import cachekit; cachekit.zoo.load(...)`, in a fresh process where nothing imported the zoo before."""
    import subprocess
    import sys

    code = "import cachekit; print(cachekit.zoo.load.__module__, cachekit.zoo.MODELS)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "cachekit.zoo" and "moving-shapes" in out
