"""Training at scale: sharded jitted steps, Orbax checkpoints, the train/eval/sample loops."""
from nfdm_jax.train.checkpointing import CheckpointError, Checkpointer
from nfdm_jax.train.experiment import Experiment, create_state, setup
from nfdm_jax.train.loop import evaluate, run_eval, run_sample, train
from nfdm_jax.train.optimizer import learning_rate, make_optimizer
from nfdm_jax.train.sharding import make_mesh, tree_shardings
from nfdm_jax.train.state import TrainState
from nfdm_jax.train.step import Training, init_state, jit_train_step, make_train_step, training

__all__ = ["CheckpointError", "Checkpointer", "Experiment", "TrainState", "Training",
           "create_state", "evaluate", "init_state", "jit_train_step", "learning_rate",
           "make_mesh", "make_optimizer", "make_train_step", "run_eval", "run_sample", "setup",
           "train", "training", "tree_shardings"]
