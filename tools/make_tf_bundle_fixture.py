"""Regenerate tests/fixtures/tf_bundle_small/ with TensorFlow: tiny TF2 + TF1 checkpoints and TF's reading.

Usage: python tools/make_tf_bundle_fixture.py [OUT_DIR]   (needs `pip install .[tf]`)
"""

import sys

import numpy as np
import tensorflow as tf

out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/tf_bundle_small"
r = np.random.default_rng(0)
tf.train.Checkpoint(
    w=tf.Variable(r.standard_normal((3, 3, 2, 4), np.float32)),
    step=tf.Variable(np.int64(2**40 + 7)),
    bf=tf.Variable(tf.constant(r.standard_normal(6), tf.bfloat16)),
    name=tf.Variable("spinenet-49"),
    empty=tf.Variable(np.zeros((0, 3), np.float32)),
    mask=tf.Variable([True, False]),
).write(f"{out}/tf2/ckpt")
with tf.Graph().as_default(), tf.compat.v1.Session() as sess:  # TF1 graph-mode Saver, as TPU checkpoints
    init = {
        "net/conv/kernel": r.standard_normal((1, 1, 2, 3), np.float32),
        "global_step": np.int64(42),
        "net/bn/gamma": tf.constant(r.standard_normal(3), tf.bfloat16),
    }
    vs = [tf.compat.v1.get_variable(n, initializer=x) for n, x in init.items()]
    vs.append(
        tf.compat.v1.get_variable(  # a partitioned variable, saved as 2 slices
            "net/part",
            shape=(5, 3),
            initializer=tf.compat.v1.random_normal_initializer(seed=1),
            partitioner=tf.compat.v1.fixed_size_partitioner(2),
        )
    )
    sess.run(tf.compat.v1.global_variables_initializer())
    tf.compat.v1.train.Saver(vs).save(sess, f"{out}/tf1/model.ckpt-42", write_meta_graph=False)
for sub in ["tf2/ckpt", "tf1/model.ckpt-42"]:  # expected values from TF's own reader
    rd = tf.train.load_checkpoint(f"{out}/{sub}")
    dts = rd.get_variable_to_dtype_map()
    exp = {  # bfloat16 as float32; (scalar) strings as their bytes, since npz cannot hold bytes objects
        k: np.frombuffer(rd.get_tensor(k), np.uint8)
        if t == tf.string
        else np.asarray(rd.get_tensor(k)).astype(np.float32 if t == tf.bfloat16 else t.as_numpy_dtype)
        for k, t in dts.items()
    }
    dtypes = np.array([f"{k}={t.name}" for k, t in dts.items()])
    np.savez(f"{out}/{sub.split('/')[0]}_expected.npz", __dtypes__=dtypes, **exp)
