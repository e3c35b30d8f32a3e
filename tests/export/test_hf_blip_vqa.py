"""BLIP VQA (``BlipForQuestionAnswering``) exported as a generative vqa bundle and answered
torch-free (:mod:`mmfast.vqa_generative`): answers token-identical to transformers'
``model.generate(input_ids, pixel_values, attention_mask)``, greedy and with 3 beams, from raw
images and questions (BlipProcessor's pixels and ids on one side, mmfast's preprocessing and
tokenizer.json on the other).

The padding of a batch: transformers' BLIP answer decoder attends to a padded question's
padding (generate passes a mask of ones, and 5.24's cross-attention drops any mask), so its
answer to a short question depends on the batch. mmfast masks the padding: its answers in a
batch of questions of different lengths must equal ``generate`` on each question alone, and
with ``attend_padding=True`` ``generate`` on the padded batch; the test checks that the two
references differ for some question, so each comparison can fail.

Scores (float64-derived tolerance): the answer's probability exp(sum log p) against
transformers' own transition scores (greedy) or length-penalised ``sequences_scores`` (beam)
of the float32 model, within |log p - log p_hf| <= 1e-5 * (answer length + 1): per token, the
log-softmax of float32 logits of magnitude ~10 carries a few float32 ulps (~1e-6) of rounding
on each side (ONNX Runtime and torch sum in other orders); 1e-5 per token is ten times that,
a bound both stay inside (measured: at most 2.2e-6 over 8 tokens), not a fit.

A tiny config with random weights (built in about a second; the vision model as wide as the
text model, which BLIP VQA needs), its [SEP] logit raised so answers end at different
lengths; the bundle is exported once per module. The tokenizer is learnt anew by each build and
tokenizers' WordPiece trainer breaks ties in hash order, so its vocabulary differs from run to
run: the properties the tests rely on to be able to fail (some answer changed by padding, some
ended by [SEP], some run to the default length) were checked to hold over 8 builds."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.export

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmfast import vqa_generative  # noqa: E402
from mmfast._pipeline import Pipeline  # noqa: E402
from mmfast.bundle import BundleError, BundleMissingFileError, write_manifest  # noqa: E402
from mmfast.generation import cut_at_eos  # noqa: E402
from mmfast_export.hf.build import build_blip_vqa  # noqa: E402
from mmfast_export.hf.common import check_images  # noqa: E402
from mmfast_export.hf.export import export_hf  # noqa: E402

MAX_LEN = 64  # the tiny text encoder's position table (its tokenizer's model_max_length)
QUESTIONS = [
    "what color is the circle?",
    "how many squares are there left of the big red triangle in this picture?",
    "is it blue",
    "where",
]
LONG = " ".join(["is the small red circle above a large blue square and"] * 8) + "?"
NEW = 16  # answer tokens: past the [SEP] of some answers, short enough to be quick
SEP_BOOST = 1.0  # added to the [SEP] logit: answers of 1 .. NEW tokens, some unfinished


class _GenerativeVQA(Pipeline):
    """The pipeline mmfast.VQA will be for a generative bundle, without its API."""

    task = "vqa"

    @classmethod
    def graph_files(cls, manifest: Any) -> list[str]:
        return vqa_generative.graph_files()

    def check_bundle(self) -> None:
        vqa_generative.check_bundle(self)


@pytest.fixture(scope="module")
def vqa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(model directory, bundle) of a tiny BLIP VQA model."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("blip_vqa")
    model_dir = build_blip_vqa(root / "model", "tiny", seed=5)
    model = transformers.BlipForQuestionAnswering.from_pretrained(model_dir)
    with torch.no_grad():  # a random model rarely says [SEP]: make it, sometimes
        model.text_decoder.cls.predictions.bias[model.config.text_config.sep_token_id] += SEP_BOOST
    model.save_pretrained(model_dir)
    export_hf(model_dir, root / "bundle")
    return model_dir, root / "bundle"


def _images() -> list[np.ndarray]:
    return check_images(3, 64)


def _hf(model_dir: Path) -> tuple[Any, Any]:
    proc = transformers.BlipProcessor.from_pretrained(model_dir)
    model = transformers.BlipForQuestionAnswering.from_pretrained(model_dir).eval()
    return proc, model


def _generate(
    model: Any, pixels: Any, ids: Any, mask: Any, beams: int, *, scores: bool = False
) -> Any:
    with torch.no_grad():
        return model.generate(
            input_ids=ids,
            pixel_values=pixels,
            attention_mask=mask,
            num_beams=beams,
            do_sample=False,
            max_new_tokens=NEW,
            output_scores=scores,
            return_dict_in_generate=scores,
        )


def _answers(
    bundle: Path, images: list[np.ndarray], index: list[int], questions: list[str], **kw: Any
) -> list[tuple[str, float, list[int]]]:
    pipe = _GenerativeVQA.load(bundle, threads=1)
    return vqa_generative.answer_generative(
        pipe, pipe.pixels(images), index, questions, max_new_tokens=NEW, **kw
    )


@pytest.mark.parametrize("beams", [1, 3])
def test_answers_token_identical_to_generate(vqa: tuple[Path, Path], beams: int) -> None:
    """Questions of different lengths (one over max_len) in one batch, several per image."""
    model_dir, bundle = vqa
    proc, model = _hf(model_dir)
    images = _images()
    # every question about every image (15 in one batch), so that some answers end at [SEP]
    # and some differ with padding, whatever vocabulary the build learnt
    questions = [q for q in [*QUESTIONS, LONG] for _ in images]
    index = [i for _ in [*QUESTIONS, LONG] for i in range(len(images))]
    sep = model.config.text_config.sep_token_id
    got = _answers(bundle, images, index, questions, beam_size=beams)
    got_padded = _answers(bundle, images, index, questions, beam_size=beams, attend_padding=True)
    batch = proc(
        images=[images[i] for i in index],
        text=questions,
        padding=True,
        truncation=True,
        return_tensors="pt",
    )
    padded = _generate(model, batch.pixel_values, batch.input_ids, batch.attention_mask, beams)
    alone_differs = 0
    lengths = set()
    for j, q in enumerate(questions):
        one = proc(images=images[index[j]], text=q, truncation=True, return_tensors="pt")
        alone = _generate(model, one.pixel_values, one.input_ids, one.attention_mask, beams)
        want = cut_at_eos(alone[0].tolist()[1:], (sep,))
        want_padded = cut_at_eos(padded[j].tolist()[1:], (sep,))
        assert got[j][2] == want, f"question {j}"
        assert got_padded[j][2] == want_padded, f"question {j} (attend_padding)"
        assert got[j][0] == proc.decode(alone[0], skip_special_tokens=True)
        alone_differs += want != want_padded
        lengths.add(len(want))
    # the two references differ somewhere (padding changes generate's answers), answers are not
    # all the same, and some end before NEW tokens ([SEP] handled) while others run to it
    assert alone_differs > 0
    assert len({tuple(a[2]) for a in got}) > 1
    assert min(lengths) < NEW and len(lengths) > 1


@pytest.mark.parametrize("beams", [1, 3])
def test_scores_are_the_answer_probability(vqa: tuple[Path, Path], beams: int) -> None:
    model_dir, bundle = vqa
    proc, model = _hf(model_dir)
    images = _images()
    got = _answers(bundle, images, [0, 1, 2], QUESTIONS[:3], beam_size=beams)
    for j, q in enumerate(QUESTIONS[:3]):
        one = proc(images=images[j], text=q, return_tensors="pt")
        out = _generate(
            model, one.pixel_values, one.input_ids, one.attention_mask, beams, scores=True
        )
        n = len(got[j][2])
        gen_len = min(n + 1, NEW)  # the closing [SEP] counted, where there is one
        if beams == 1:
            steps = model.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True
            )
            want = float(steps[0, :gen_len].double().sum())
        else:
            lp = json.loads((bundle / "manifest.json").read_text())["generation"]["length_penalty"]
            want = float(out.sequences_scores[0]) * gen_len**lp
        assert 0.0 < got[j][1] <= 1.0
        assert abs(math.log(got[j][1]) - want) <= 1e-5 * (n + 1)


def test_long_question_is_cut_as_truncation_true(vqa: tuple[Path, Path]) -> None:
    model_dir, bundle = vqa
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    assert len(tok(LONG).input_ids) > MAX_LEN == tok.model_max_length
    pipe = _GenerativeVQA.load(bundle, threads=1)
    assert pipe.bundle.manifest.vqa is not None and pipe.bundle.manifest.vqa.max_len == MAX_LEN
    want = tok(LONG, truncation=True).input_ids
    assert pipe.tokenizer.encode(LONG, max_length=MAX_LEN) == want
    assert len(want) == MAX_LEN and want[-1] == tok.sep_token_id  # [SEP] kept at the end


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question_is_a_clear_error(vqa: tuple[Path, Path], question: str) -> None:
    _, bundle = vqa
    with pytest.raises(ValueError, match=r"questions\[1\]: the question is empty"):
        _answers(bundle, _images(), [0, 1], ["what color?", question])


def test_unseen_characters_get_an_answer(vqa: tuple[Path, Path]) -> None:
    """Emoji and CJK are [UNK] to the WordPiece vocabulary: answered as generate answers."""
    model_dir, bundle = vqa
    proc, model = _hf(model_dir)
    images = _images()
    questions = ["🙂🙂 ?", "这是什么颜色", "what colour is the 🐈"]
    got = _answers(bundle, images, [0, 1, 2], questions)
    for j, q in enumerate(questions):
        one = proc(images=images[j], text=q, return_tensors="pt")
        assert proc.tokenizer.unk_token_id in one.input_ids[0].tolist()
        alone = _generate(model, one.pixel_values, one.input_ids, one.attention_mask, 1)
        sep = model.config.text_config.sep_token_id
        assert got[j][2] == cut_at_eos(alone[0].tolist()[1:], (sep,))
        assert isinstance(got[j][0], str)


def test_bad_arguments(vqa: tuple[Path, Path]) -> None:
    _, bundle = vqa
    pipe = _GenerativeVQA.load(bundle, threads=1)
    px = pipe.pixels(_images()[:2])
    with pytest.raises(ValueError, match="image_index"):
        vqa_generative.answer_generative(pipe, px, [0, 2], ["a?", "b?"])
    with pytest.raises(ValueError, match="image_index"):
        vqa_generative.answer_generative(pipe, px, [0], ["a?", "b?"])
    with pytest.raises(ValueError, match="questions"):
        vqa_generative.answer_generative(pipe, px, [], [])
    with pytest.raises(ValueError, match="beam_size"):
        vqa_generative.answer_generative(pipe, px, [0], ["a?"], beam_size=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        vqa_generative.answer_generative(pipe, px, [0], ["a?"], max_new_tokens=MAX_LEN + 1)
    with pytest.raises(ValueError, match="pixels"):
        vqa_generative.answer_generative(pipe, px.astype(np.float64), [0], ["a?"])


def test_manifest(vqa: tuple[Path, Path]) -> None:
    _, bundle = vqa
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["task"] == "vqa" and m["kind"] == "hf_blip_vqa"
    assert m["vqa"]["generative"] is True and m["vqa"]["max_len"] == MAX_LEN
    assert "answers" not in m
    assert m["generation"]["eos_token_id"] == [3]  # [SEP], not text_config.eos_token_id (2)
    assert set(m["graphs"]) == set(vqa_generative.graph_files())
    report = m["validation"]["hf_generate"]
    assert report["greedy_tokens_identical"] and report["beam3_tokens_identical"]
    assert len(report["question_tokens"]) > 1  # questions of several lengths in one batch


def _copy(bundle: Path, tmp: Path) -> Path:
    out = tmp / "copy"
    shutil.copytree(bundle, out)
    return out


def test_missing_question_encoder_is_a_bundle_error(vqa: tuple[Path, Path], tmp_path: Path) -> None:
    _, bundle = vqa
    broken = _copy(bundle, tmp_path)
    (broken / "question_encoder.onnx").unlink()
    with pytest.raises(BundleMissingFileError, match=r"question_encoder\.onnx"):
        _GenerativeVQA.load(broken, threads=1)
    # not listed in the manifest either: still a BundleError naming it
    m = json.loads((broken / "manifest.json").read_text())
    del m["graphs"]["question_encoder.onnx"]
    for key in ("format_version", "files"):
        m.pop(key)
    write_manifest(broken, m)
    with pytest.raises(BundleError, match=r"question_encoder\.onnx"):
        _GenerativeVQA.load(broken, threads=1)


def test_step_without_question_bias_is_a_bundle_error(
    vqa: tuple[Path, Path], tmp_path: Path
) -> None:
    """A question encoder that does not make the padding mask: refused at load, not at the
    first answer."""
    _, bundle = vqa
    broken = _copy(bundle, tmp_path)
    shutil.copy(broken / "image_encoder.onnx", broken / "question_encoder.onnx")
    m = json.loads((broken / "manifest.json").read_text())
    for key in ("format_version", "files"):
        m.pop(key)
    write_manifest(broken, m)
    with pytest.raises(BundleError, match=r"question_encoder\.onnx"):
        _GenerativeVQA.load(broken, threads=1)


def test_runs_with_torch_and_transformers_blocked(vqa: tuple[Path, Path]) -> None:
    """The runtime side answers with torch and transformers unimportable."""
    code = (
        "import sys\n"
        "for m in ('torch', 'transformers'): sys.modules[m] = None\n"
        "import numpy as np\n"
        "from mmfast import vqa_generative\n"
        "from mmfast._pipeline import Pipeline\n"
        "class G(Pipeline):\n"
        "    task = 'vqa'\n"
        "    graph_files = classmethod(lambda cls, m: vqa_generative.graph_files())\n"
        "    def check_bundle(self): vqa_generative.check_bundle(self)\n"
        f"p = G.load({str(vqa[1])!r}, threads=1)\n"
        "px = p.pixels([np.zeros((40, 50, 3), np.uint8)])\n"
        "out = vqa_generative.answer_generative(p, px, [0, 0], ['what?', 'how many?'],"
        " beam_size=2, max_new_tokens=3)\n"
        "print('OK', len(out), all(isinstance(a[0], str) for a in out))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "OK 2 True"


def test_default_length_is_generates(vqa: tuple[Path, Path]) -> None:
    """No max_new_tokens: as many answer tokens as generate() makes without one (its default
    max_length counts [DEC]); every question about every image, so that some answers run to
    that limit and decide it."""
    model_dir, bundle = vqa
    proc, model = _hf(model_dir)
    images = _images()
    pipe = _GenerativeVQA.load(bundle, threads=1)
    pairs = [(q, i) for q in [*QUESTIONS, LONG] for i in range(len(images))]
    got = vqa_generative.answer_generative(
        pipe, pipe.pixels(images), [i for _, i in pairs], [q for q, _ in pairs]
    )
    sep = model.config.text_config.sep_token_id
    for (q, i), answer in zip(pairs, got, strict=True):
        one = proc(images=images[i], text=q, truncation=True, return_tensors="pt")
        with torch.no_grad():
            want = model.generate(**one)[0].tolist()[1:]
        assert answer[2] == cut_at_eos(want, (sep,))
    default = json.loads((bundle / "manifest.json").read_text())["generation"]["max_length"] - 1
    assert default == 20 and any(len(a[2]) == default for a in got)
