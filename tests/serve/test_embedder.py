"""The plain embedder, without TorchServe: decoding rules and embeddings."""

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image

from serve.embedder import Embedder, ImageLimits, InvalidImage, decode_image
from tests.serve.images import bad_images, encode, photo, valid_images
from core.preprocessing import load_image


@pytest.mark.parametrize("name", sorted(valid_images()))
def test_unusual_but_valid_images_decode_to_rgb(name):
    image = decode_image(valid_images()[name])
    assert image.mode == "RGB" and min(image.size) > 0


def test_exif_orientation_and_first_gif_frame():
    assert decode_image(valid_images()["exif-rotated"]).size == (64, 96)  # stored 96x64, shown rotated
    first_frame = np.asarray(decode_image(valid_images()["gif-animated"]), dtype=np.float32)
    expected = np.asarray(photo(seed=1).convert("P").convert("RGB"), dtype=np.float32)
    assert np.abs(first_frame - expected).mean() < 1.0


def test_sixteen_bit_is_scaled_not_clipped():
    assert np.asarray(decode_image(valid_images()["16-bit"])).max() < 255  # values up to 61430 >> 8 = 239


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert decode_image(encode(clear, "PNG")).getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_inputs_raise_invalid_image_with_their_status(name):
    body, status = bad_images()[name]
    with pytest.raises(InvalidImage) as error:
        decode_image(body)
    assert error.value.status == status, str(error.value)


def test_limits_are_configurable_and_checked_before_decoding():
    body = encode(photo((200, 100)), "PNG")
    with pytest.raises(InvalidImage, match="limit is 100 bytes") as error:
        decode_image(body, ImageLimits(max_bytes=100))
    assert error.value.status == 413
    with pytest.raises(InvalidImage, match="200x100 pixels; the limit is 10000") as error:
        decode_image(body, ImageLimits(max_pixels=10_000))
    assert error.value.status == 413


def test_embeddings_equal_the_servables_own_encode(tiny_run):
    embedder = Embedder.load(tiny_run)
    images = [photo(seed=s) for s in range(5)]
    embeddings = embedder.embed(images)
    assert embeddings.shape == (5, embedder.dim) and embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    reference = F.normalize(embedder.model.encode(images, to_numpy=False), dim=1).numpy()
    assert np.allclose(embeddings, reference, atol=1e-5)
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_a_cpu_embeds_in_chunks_of_eight_and_chunking_changes_no_vector(tiny_run):
    embedder = Embedder.load(tiny_run)
    assert embedder.batch_size == 8  # serve/embedder.py's default_batch_size on a CPU
    images = [photo(seed=s) for s in range(19)]  # two full chunks and a partial one
    whole = Embedder.load(tiny_run, batch_size=19).embed(images)
    assert np.allclose(embedder.embed(images), whole, atol=1e-5)


def test_serving_decode_matches_training_decode(tiny_run, tmp_path):
    """Same bytes -> same pixels in training (load_image from a file) and serving (decode_image)."""
    for name, body in valid_images().items():
        path = tmp_path / name
        path.write_bytes(body)
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(decode_image(body))), name
