"""priority_fn examples for hydra.launcher.priority_fn (the seed's calculate_priority pattern)."""


def by_lr(config) -> int:
    base = 100
    if config["lr"] == 0.1:  # the expected optimum first
        base += 800
    return max(0, min(1000, base + config["seed"]))


def too_high(config) -> int:
    return 1001


def broken(config) -> int:
    raise KeyError("no such key")
