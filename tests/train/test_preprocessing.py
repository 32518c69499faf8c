import io

import pytest
import torch
from PIL import Image

from core.preprocessing import Preprocessing, load_image


def test_round_trip_through_dict_gives_the_same_transform():
    original = Preprocessing(input_size=96, interpolation="bicubic")
    restored = Preprocessing.from_dict(original.to_dict())
    assert restored == original
    image = Image.new("RGB", (120, 80), (200, 30, 60))
    assert torch.equal(original(image), restored(image))


def test_output_is_normalised_square_tensor():
    tensor = Preprocessing(input_size=64)(Image.new("RGB", (300, 100), (124, 116, 104)))
    assert tensor.shape == (3, 64, 64) and tensor.dtype == torch.float32
    # ImageNet mean colour maps to ~0 after normalisation.
    assert tensor.abs().max() < 0.02


def test_unknown_keys_and_bad_values_are_rejected():
    with pytest.raises(ValueError, match="unknown preprocessing keys"):
        Preprocessing.from_dict({"input_size": 64, "crop": 56})
    with pytest.raises(ValueError, match="Unknown interpolation 'nearest'"):
        Preprocessing(interpolation="nearest")
    with pytest.raises(ValueError, match="input_size"):
        Preprocessing(input_size=0)


def test_any_image_mode_becomes_rgb():
    preprocessing = Preprocessing(input_size=32)
    for mode in ("L", "RGBA", "P", "CMYK", "I;16"):
        assert preprocessing(Image.new(mode, (40, 40))).shape == (3, 32, 32)


def test_load_image_honours_exif_orientation():
    image = Image.new("RGB", (60, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    loaded = load_image(buffer.getvalue())
    assert loaded.size == (20, 60) and loaded.mode == "RGB"
