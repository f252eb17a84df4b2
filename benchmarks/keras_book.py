"""The book's own Keras code (Geron, Hands-On Machine Learning, 2nd/3rd ed., ch. 17), for
comparing genmodels against what the book's readers run. NOT part of genmodels: it needs
TensorFlow, which the project does not depend on. Run it with a throwaway virtualenv:

    python -m venv /tmp/tfenv && /tmp/tfenv/bin/pip install tensorflow-cpu
    /tmp/tfenv/bin/python benchmarks/keras_book.py dcgan --seed 0 --epochs 10 20 --out DIR
    /tmp/tfenv/bin/python benchmarks/keras_book.py vae --seed 0 --epochs 10 20 --out DIR
    /tmp/tfenv/bin/python benchmarks/keras_book.py speed --model dcgan --batch-size 32

Data: the first `--train` (8,000) images of an MNIST IDX file, scaled as the book does
(DCGAN: [-1, 1]; VAE: [0, 1]). Training writes `<model>_seed<S>_epoch<E>.npz` (2,000
samples as uint8, and for the VAE its ELBO on the held-out images) after each epoch listed
in `--epochs`, and `<model>_seed<S>.json` with the training time. `speed` prints one JSON
line of training images per second. `benchmarks/compare_keras.py` drives all of it.
"""

import argparse
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np

DEFAULT_IMAGES = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist-t10k"
                  / "t10k-images-idx3-ubyte.gz")


def read_idx_images(path: str) -> np.ndarray:
    with gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    n, rows, cols = (int.from_bytes(data[i : i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(n, rows, cols)


# ----- the book's networks, line for line (Keras 3 needs `Input` and a loss layer) -------

def book_dcgan(keras, codings_size=100):
    generator = keras.models.Sequential([
        keras.Input(shape=[codings_size]),
        keras.layers.Dense(7 * 7 * 128),
        keras.layers.Reshape([7, 7, 128]),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2DTranspose(64, kernel_size=5, strides=2, padding="same",
                                     activation="selu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2DTranspose(1, kernel_size=5, strides=2, padding="same",
                                     activation="tanh"),
    ])
    discriminator = keras.models.Sequential([
        keras.Input(shape=[28, 28, 1]),
        keras.layers.Conv2D(64, kernel_size=5, strides=2, padding="same",
                            activation=keras.layers.LeakyReLU(0.2)),
        keras.layers.Dropout(0.4),
        keras.layers.Conv2D(128, kernel_size=5, strides=2, padding="same",
                            activation=keras.layers.LeakyReLU(0.2)),
        keras.layers.Dropout(0.4),
        keras.layers.Flatten(),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    gan = keras.models.Sequential([generator, discriminator])
    discriminator.compile(loss="binary_crossentropy", optimizer="rmsprop")
    discriminator.trainable = False
    gan.compile(loss="binary_crossentropy", optimizer="rmsprop")
    return gan, generator, discriminator


def train_dcgan_epoch(tf, gan, dataset, batch_size, codings_size=100):
    """One epoch of the book's `train_gan` loop."""
    generator, discriminator = gan.layers
    for X_batch in dataset:
        # phase 1 - training the discriminator
        noise = tf.random.normal(shape=[batch_size, codings_size])
        generated_images = generator(noise)
        X_fake_and_real = tf.concat([generated_images, X_batch], axis=0)
        y1 = tf.constant([[0.]] * batch_size + [[1.]] * batch_size)
        discriminator.trainable = True
        discriminator.train_on_batch(X_fake_and_real, y1)
        # phase 2 - training the generator
        noise = tf.random.normal(shape=[batch_size, codings_size])
        y2 = tf.constant([[1.]] * batch_size)
        discriminator.trainable = False
        gan.train_on_batch(noise, y2)


def book_vae(keras, tf, codings_size=10):
    class Sampling(keras.layers.Layer):
        def call(self, inputs):
            mean, log_var = inputs
            return keras.random.normal(tf.shape(log_var)) * keras.ops.exp(log_var / 2) + mean

    class LatentLoss(keras.layers.Layer):
        """The book's `add_loss(K.mean(latent_loss) / 784.)` (Keras 3 wants it in a layer)."""

        def call(self, inputs):
            mean, log_var = inputs
            latent_loss = -0.5 * keras.ops.sum(
                1 + log_var - keras.ops.exp(log_var) - keras.ops.square(mean), axis=-1)
            self.add_loss(keras.ops.mean(latent_loss) / 784.)
            return mean

    inputs = keras.layers.Input(shape=[28, 28])
    z = keras.layers.Flatten()(inputs)
    z = keras.layers.Dense(150, activation="selu")(z)
    z = keras.layers.Dense(100, activation="selu")(z)
    codings_mean = keras.layers.Dense(codings_size)(z)
    codings_log_var = keras.layers.Dense(codings_size)(z)
    codings_mean = LatentLoss()([codings_mean, codings_log_var])
    codings = Sampling()([codings_mean, codings_log_var])
    encoder = keras.Model(inputs=[inputs], outputs=[codings_mean, codings_log_var, codings])
    decoder_inputs = keras.layers.Input(shape=[codings_size])
    x = keras.layers.Dense(100, activation="selu")(decoder_inputs)
    x = keras.layers.Dense(150, activation="selu")(x)
    x = keras.layers.Dense(28 * 28, activation="sigmoid")(x)
    outputs = keras.layers.Reshape([28, 28])(x)
    decoder = keras.Model(inputs=[decoder_inputs], outputs=[outputs])
    _, _, codings = encoder(inputs)
    reconstructions = decoder(codings)
    vae = keras.Model(inputs=[inputs], outputs=[reconstructions])
    vae.compile(loss="binary_crossentropy", optimizer="rmsprop")
    return vae, encoder, decoder


def negative_elbo(keras, encoder, decoder, x: np.ndarray) -> float:
    """-ELBO in nats per image (summed Bernoulli NLL + KL, one posterior sample), the
    quantity genmodels' VAE logs as val/loss."""
    mean, log_var, codings = (np.asarray(t, np.float64) for t in encoder(x, training=False))
    p = np.clip(np.asarray(decoder(codings.astype(np.float32)), np.float64), 1e-7, 1 - 1e-7)
    x = x.astype(np.float64)
    nll = -(x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(len(x), -1).sum(1)
    kl = -0.5 * (1 + log_var - np.exp(log_var) - mean**2).sum(1)
    return float((nll + kl).mean())


def to_uint8(images: np.ndarray, low: float) -> np.ndarray:
    unit = (images - low) / (1.0 - low)
    return np.clip(np.round(unit * 255), 0, 255).astype(np.uint8).reshape(len(images), 28, 28)


# ----- commands ---------------------------------------------------------------------------

def train(args, tf, keras) -> None:
    keras.utils.set_random_seed(args.seed)
    images = read_idx_images(args.images)
    x_train = images[: args.train].astype(np.float32) / 255.0
    x_held = images[-args.held_out :].astype(np.float32) / 255.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"model": args.model, "seed": args.seed, "epoch_seconds": [],
              "tensorflow": tf.__version__, "keras": keras.__version__}
    if args.model == "dcgan":
        batch_size = 32
        gan, generator, _ = book_dcgan(keras)
        dataset = tf.data.Dataset.from_tensor_slices(x_train.reshape(-1, 28, 28, 1) * 2. - 1.)
        dataset = dataset.shuffle(1000).batch(batch_size, drop_remainder=True).prefetch(1)
    else:
        vae, encoder, decoder = book_vae(keras, tf)
    for epoch in range(1, max(args.epochs) + 1):
        start = time.perf_counter()
        if args.model == "dcgan":
            train_dcgan_epoch(tf, gan, dataset, batch_size)
        else:
            vae.fit(x_train, x_train, epochs=1, batch_size=128, verbose=0)
        record["epoch_seconds"].append(time.perf_counter() - start)
        print(f"{args.model} seed {args.seed} epoch {epoch}: "
              f"{record['epoch_seconds'][-1]:.1f} s", flush=True)
        if epoch not in args.epochs:
            continue
        noise = np.random.default_rng(1000 + args.seed).standard_normal(
            (args.samples, 100 if args.model == "dcgan" else 10)).astype(np.float32)
        saved = {}
        if args.model == "dcgan":  # the book samples with `generator(noise)`
            saved["images"] = to_uint8(np.asarray(generator(noise)), -1.0)
        else:
            saved["images"] = to_uint8(np.asarray(decoder(noise)), 0.0)
            saved["neg_elbo"] = negative_elbo(keras, encoder, decoder, x_held)
        np.savez_compressed(out / f"{args.model}_seed{args.seed}_epoch{epoch}.npz", **saved)
    (out / f"{args.model}_seed{args.seed}.json").write_text(json.dumps(record, indent=1))


def speed(args, tf, keras) -> None:
    """Training images per second of the book's loop (DCGAN) or `fit` (VAE): `--warmup`
    batches first (tracing, first allocations), then `--rounds` timed passes of `--steps`
    batches. Prints one JSON line."""
    keras.utils.set_random_seed(0)
    images = read_idx_images(args.images)[: args.train].astype(np.float32) / 255.0
    total = args.warmup + args.steps
    x = np.resize(images, (total * args.batch_size, 28, 28))
    rates = []
    if args.model == "dcgan":
        gan, _, _ = book_dcgan(keras)
        data = x.reshape(-1, 28, 28, 1) * 2. - 1.
        dataset = tf.data.Dataset.from_tensor_slices(data).shuffle(1000)
        dataset = dataset.batch(args.batch_size, drop_remainder=True).prefetch(1)
        train_dcgan_epoch(tf, gan, dataset.take(args.warmup), args.batch_size)  # tracing
        for _ in range(args.rounds):
            start = time.perf_counter()
            train_dcgan_epoch(tf, gan, dataset.take(args.steps), args.batch_size)
            rates.append(args.steps * args.batch_size / (time.perf_counter() - start))
    else:
        vae, _, _ = book_vae(keras, tf)

        class Timer(keras.callbacks.Callback):
            """Times batches warmup+1 .. warmup+steps inside one `fit` epoch."""

            def on_train_batch_end(self, batch, logs=None):
                if batch == args.warmup - 1:
                    self.start = time.perf_counter()
                elif batch == total - 1:
                    rates.append(args.steps * args.batch_size / (time.perf_counter() - self.start))

        for _ in range(args.rounds):
            vae.fit(x, x, epochs=1, batch_size=args.batch_size, shuffle=True, verbose=0,
                    callbacks=[Timer()])
    print(json.dumps({"model": args.model, "batch_size": args.batch_size,
                      "images_per_s": rates, "tensorflow": tf.__version__}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["dcgan", "vae", "speed"])
    parser.add_argument("--model", choices=["dcgan", "vae"], default="dcgan")
    parser.add_argument("--images", default=str(DEFAULT_IMAGES))
    parser.add_argument("--train", type=int, default=8000)
    parser.add_argument("--held-out", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--out", default="keras_runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="0: TensorFlow's default")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    if args.command == "speed":
        speed(args, tf, keras)
    else:
        args.model = args.command
        train(args, tf, keras)


if __name__ == "__main__":
    main()
