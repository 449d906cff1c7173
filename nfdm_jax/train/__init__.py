"""Training at scale: sharded jitted steps, Orbax checkpoints, the train/eval/sample loops."""
from nfdm_jax.train.checkpointing import CheckpointError, Checkpointer
from nfdm_jax.train.loop import Experiment, evaluate, run_eval, run_sample, setup, train
from nfdm_jax.train.optimizer import learning_rate, make_optimizer
from nfdm_jax.train.sharding import make_mesh, tree_shardings
from nfdm_jax.train.state import TrainState
from nfdm_jax.train.step import init_state, jit_train_step, make_train_step

__all__ = ["CheckpointError", "Checkpointer", "Experiment", "TrainState", "evaluate",
           "init_state", "jit_train_step", "learning_rate", "make_mesh",
           "make_optimizer", "make_train_step", "run_eval", "run_sample", "setup",
           "train", "tree_shardings"]
