"""Regenerates the small data fixtures under tests/data/data/ with h5py (the files are committed).
images_u8.h5 also holds `expected_pixel_values`: what transformers' ViTImageProcessor (no resize)
makes of the same uint8 images with tests/data/tiny-vit-preprocessor.json, the reference for our
normalisation."""
import json
import os

import h5py
import numpy as np
from transformers import ViTImageProcessor

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
os.makedirs(here, exist_ok=True)
rng = np.random.default_rng(0)


def write(name, **datasets):
    with h5py.File(os.path.join(here, name), "w") as f:
        for k, v in datasets.items():
            f[k] = v


ids = rng.integers(0, 64, size=(6, 8))
write("tokens_i32.h5", input_ids=ids.astype(np.int32), attention_mask=(rng.random((6, 8)) > 0.2).astype(np.int8))
write("tokens_i64.h5", input_ids=ids[:4].astype(np.int64))
oov = ids.copy()
oov[2, 5] = 64
write("tokens_oov.h5", input_ids=oov.astype(np.int32))
write("tokens_float.h5", input_ids=ids.astype(np.float32))
write("tokens_rank3.h5", input_ids=ids.reshape(2, 3, 8).astype(np.int32))
write("tokens_bad_mask.h5", input_ids=ids.astype(np.int32), attention_mask=np.ones((6, 7), np.int32))
write("tokens_no_ids.h5", tokens=ids.astype(np.int32))

images = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
pre = {"do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": [0.485, 0.456, 0.406],
       "image_std": [0.229, 0.224, 0.225], "do_resize": False}
with open(os.path.join(here, "preprocessor_config.json"), "w") as f:
    json.dump({**pre, "image_processor_type": "ViTImageProcessor"}, f, indent=2)
expected = ViTImageProcessor(**pre)(list(images), return_tensors="np", input_data_format="channels_first")["pixel_values"]
write("images_u8.h5", pixel_values=images, expected_pixel_values=expected.astype(np.float32))
write("images_f32.h5", pixel_values=rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
write("images_wrong_size.h5", pixel_values=images[:, :, :16, :16].copy())
write("images_int16.h5", pixel_values=images.astype(np.int16))
with open(os.path.join(here, "not_hdf5.h5"), "w") as f:
    f.write("this is not an HDF5 file\n")
