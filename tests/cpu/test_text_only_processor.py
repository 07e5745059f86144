"""verl's HFModelConfig on the CPU platform: a text-only model folder gets verl's None for its processor without
AutoProcessor loading the tokenizer a second time; anything AutoProcessor could turn into a processor still asks it."""

import json
import shutil

import pytest

from verl_variance.cpu import patches
from verl_variance.cpu.patches import text_only_folder
from verl_variance.integration.compat import ORIGINALS

ORIGINAL = "verl.workers.config.model.hf_processor"


@pytest.fixture
def model_module():
    from verl.workers.config import model

    assert ORIGINAL in ORIGINALS, "the processor patch was not applied on import"
    return model


@pytest.fixture
def folder(tiny_models, tmp_path):
    """A copy of the tiny llama (a text-only folder) to edit."""
    return shutil.copytree(tiny_models["llama"], tmp_path / "llama")


def edit_json(path, **changes) -> None:
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize("architecture", ["qwen2", "llama", "gpt2"])
def test_text_only_folders_are_those_verl_gives_no_processor(model_module, tiny_models, architecture):
    path = str(tiny_models[architecture])
    assert text_only_folder(path, {"trust_remote_code": False})
    assert ORIGINALS[ORIGINAL](path, trust_remote_code=False) is None  # what AutoProcessor + verl make of it


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: (p / "preprocessor_config.json").write_text("{}"),  # an image processor / feature extractor
        lambda p: (p / "processor_config.json").write_text("{}"),
        lambda p: (p / "video_preprocessor_config.json").write_text("{}"),
        lambda p: edit_json(p / "tokenizer_config.json", processor_class="LlavaProcessor"),
        lambda p: edit_json(p / "config.json", processor_class="LlavaProcessor"),
        lambda p: edit_json(p / "config.json", auto_map={"AutoProcessor": "processing.MyProcessor"}),
        lambda p: edit_json(p / "config.json", model_type="llava"),  # transformers maps the type to a processor
        lambda p: edit_json(p / "config.json", model_type=None),  # AutoConfig would guess the type from the path
        lambda p: (p / "tokenizer_config.json").unlink(),
        lambda p: (p / "config.json").write_text("not json"),
    ],
)
def test_anything_autoprocessor_could_use_is_left_to_it(folder, edit):
    assert text_only_folder(str(folder), {})
    edit(folder)
    assert not text_only_folder(str(folder), {})


def test_other_arguments_and_hub_names_are_left_to_autoprocessor(folder):
    assert not text_only_folder(str(folder), {"revision": "main"})
    assert not text_only_folder("HuggingFaceTB/SmolLM2-135M", {})
    assert not text_only_folder(folder / "config.json", {})


@pytest.mark.parametrize(("on_cpu", "processor_file", "asks_autoprocessor"),
                         [(True, False, False), (False, False, True), (True, True, True)])  # fmt: skip
def test_hf_model_config_skips_autoprocessor_on_the_cpu_platform_only(
    model_module, folder, monkeypatch, on_cpu, processor_file, asks_autoprocessor
):
    """verl's HFModelConfig (the tokenizer loaded, the processor None) asks AutoProcessor only off the CPU platform
    or when the folder has a processor file."""
    import transformers

    if processor_file:
        (folder / "processor_config.json").write_text("{}")
    asked = []
    original = transformers.AutoProcessor.from_pretrained
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained",
                        lambda *args, **kwargs: asked.append(args[0]) or original(*args, **kwargs))  # fmt: skip
    monkeypatch.setattr(patches, "_on_cpu_platform", lambda: on_cpu)
    config = model_module.HFModelConfig(path=str(folder))
    assert config.processor is None
    assert config.tokenizer.pad_token_id is not None
    assert bool(asked) is asks_autoprocessor


def test_an_autoprocessor_without_the_names_mirrored_here_is_asked(folder, monkeypatch):
    """An older transformers whose AutoProcessor does not look at video processor files: not mirrored, asked."""
    from transformers.models.auto import processing_auto

    monkeypatch.delattr(processing_auto, "VIDEO_PROCESSOR_NAME")
    assert not text_only_folder(str(folder), {})
