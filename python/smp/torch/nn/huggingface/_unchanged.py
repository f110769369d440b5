"""What SMP's state-dict translation functions do on smp: nothing to translate.

SMP's distributed transformer renamed and reshaped a Hugging Face model's parameters, and its
``translate_*`` functions converted state dicts both ways. smp's translations keep the module's
own parameters (names and shapes) and DistributedModel.state_dict() gives them back whole in
Hugging Face's shapes, so a state dict is the same in both "directions": these functions
return a shallow copy, so scripts that call them keep working."""


def unchanged(state_dict, max_seq_len=None):
    return dict(state_dict)
