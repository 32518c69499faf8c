"""`Embedder.embed_bytes`: the batched bytes path (PIL and tensor decoders) against `embed`."""

import numpy as np
import pytest

from serve.embedder import Embedder, ImageLimits, InvalidImage, decode_image, is_plain_jpeg, open_image
from tests.serve.images import bad_images, encode, photo, valid_images


@pytest.fixture(scope="module")
def embedders(tiny_run):
    return Embedder.load(tiny_run, decode="pil"), Embedder.load(tiny_run, decode="tensor")


def test_pil_bytes_path_equals_embed_of_decoded_images(embedders):
    pil, _ = embedders
    bodies = list(valid_images().values())
    expected = pil.embed([decode_image(body) for body in bodies])
    results = pil.embed_bytes(bodies)
    assert np.array_equal(np.stack(results), expected)


def test_tensor_decoder_matches_pil_on_jpegs(embedders):
    """On the CPU the tensor decoder is libjpeg + torch resize: within a grey level of PIL's pixels."""
    pil, tensor = embedders
    bodies = [encode(photo((300 + 37 * seed, 160 + 11 * seed), seed=seed), "JPEG", quality=90) for seed in range(6)]
    assert all(is_plain_jpeg(open_image(body), body) for body in bodies)
    expected = pil.embed([decode_image(body) for body in bodies])
    got = np.stack(tensor.embed_bytes(bodies))
    cosine = (got * expected).sum(axis=1)
    assert cosine.min() > 0.999, cosine


def test_tensor_decoder_sends_other_inputs_to_pil_with_the_same_errors(embedders):
    pil, tensor = embedders
    bodies = list(valid_images().values())
    bad = {name: body for name, (body, _) in bad_images().items()}
    reference = pil.embed_bytes(bodies + list(bad.values()))
    results = tensor.embed_bytes(bodies + list(bad.values()))
    for name, expected, got in zip([*valid_images(), *bad], reference, results, strict=True):
        if isinstance(expected, InvalidImage):
            assert isinstance(got, InvalidImage) and got.status == expected.status and str(got) == str(expected), name
        else:
            assert float(got @ expected) > 0.999, name


def test_exif_rotated_and_truncated_jpegs_are_not_plain():
    body = valid_images()["exif-rotated"]
    assert not is_plain_jpeg(open_image(body), body)
    truncated = encode(photo((200, 120)), "JPEG")[:-200]
    assert not is_plain_jpeg(open_image(truncated), truncated)


def test_limits_apply_to_the_bytes_path(embedders):
    _, tensor = embedders
    body = encode(photo((200, 100)), "JPEG")
    [result] = tensor.embed_bytes([body], ImageLimits(max_pixels=10_000))
    assert isinstance(result, InvalidImage) and result.status == 413
    assert tensor.embed_bytes([]) == []
