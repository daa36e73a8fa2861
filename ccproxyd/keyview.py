"""What an access key limited to some groups may see of the others: nothing.

Its model list was always filtered; ``/metrics`` and ``/healthz?deep=1`` name
groups, aliases, targets and providers too, so they are filtered with the
same view: a series or a cooldown entry is shown only when every group,
target and provider it names belongs to the key's groups.
"""

from __future__ import annotations

from .config import Config


class GroupView:
    def __init__(self, config: Config, groups: tuple[str, ...]) -> None:
        chosen = [config.groups[name] for name in groups if name in config.groups]
        self.groups = frozenset(g.name for g in chosen)
        targets = [t for g in chosen for alias in g.aliases for t in alias.targets]
        self.targets = frozenset(str(t) for t in targets)
        self.providers = frozenset(t.provider for t in targets)
        self.models = frozenset((t.provider, t.model) for t in targets)

    def allows(self, label: str, value: str) -> bool:
        """Whether a metric label value belongs to the view (labels other than these three always do)."""
        if label == "group":
            return value in self.groups
        if label == "target":
            return value in self.targets
        if label == "provider":
            return value in self.providers
        return True

    def allows_cooldown(self, entry: dict) -> bool:
        """A /healthz cooldown entry: its provider, and its model when it names one."""
        if entry.get("provider") not in self.providers:
            return False
        return "model" not in entry or (entry["provider"], entry["model"]) in self.models
