import math

import pytest

from dnamamba.model import MambaConfig, MambaLM
from dnamamba.tasks.optim import OptimConfig, build_optimizer, param_groups, warmup_cosine


def test_no_weight_decay_on_norms_biases_A_log_and_D():
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=4))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    for n in no_decay_names:
        assert n.endswith(("A_log", "D", "bias", "norm.weight", "norm_f.weight")), n
    assert {"layers.0.mixer.A_log", "layers.0.mixer.D", "layers.1.norm.weight", "norm_f.weight",
            "layers.0.mixer.dt_proj.bias", "layers.0.mixer.conv_bias"} <= no_decay_names
    assert {"layers.0.mixer.in_proj.weight", "embedding.weight"} <= decay_names
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_warmup_then_cosine():
    lrs = [warmup_cosine(s, 10, 110, 0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[10:110], lrs[11:111]))
    assert lrs[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[115] == pytest.approx(0.1)


def test_scheduler_follows_the_schedule():
    model = MambaLM(MambaConfig(d_model=16, n_layer=1, d_state=4))
    opt, sched = build_optimizer(model, OptimConfig(lr=1e-2, warmup_steps=4), total_steps=20)
    seen = []
    for _ in range(20):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[3] == pytest.approx(1e-2) and seen[0] == pytest.approx(2.5e-3)
    assert seen[-1] < seen[4]
