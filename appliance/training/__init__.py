"""Training state that survives: save and resume a run so that it does not diverge.

Owns the public training-state API. Layer: above ``appliance.api`` (it stores through it),
below the service and models. Vocabulary follows ``torch.distributed.checkpoint``::

    from appliance import training
    training.save(store, key, model, optimizer,
                  stateful={"scheduler": scheduler, "scaler": scaler},
                  generators={"sampler": sampler_gen}, position={"epoch": 0, "batch": 3})
    ...                                        # power cut; a fresh process:
    resumed = training.load(store, model, optimizer,
                            stateful={"scheduler": scheduler, "scaler": scaler},
                            generators={"sampler": sampler_gen})
    resumed.position                           # {"epoch": 0, "batch": 3}

``get_state_dict`` / ``set_state_dict`` gather and put back the nested state without a
store; ``flatten`` / ``unflatten`` turn it into named tensors + a JSON skeleton and back.
"""

from appliance.training.checkpoint import METADATA_KEY, TrainingCheckpoint, load, save, served_record
from appliance.training.flatten import flatten, model_skeleton, unflatten
from appliance.training.state import (
    Stateful,
    get_state_dict,
    load_optimizer_state_dict,
    optimizer_state_dict,
    rng_state,
    set_rng_state,
    set_state_dict,
)

__all__ = [
    "METADATA_KEY",
    "Stateful",
    "TrainingCheckpoint",
    "flatten",
    "get_state_dict",
    "load",
    "load_optimizer_state_dict",
    "model_skeleton",
    "optimizer_state_dict",
    "rng_state",
    "save",
    "served_record",
    "set_rng_state",
    "set_state_dict",
    "unflatten",
]
