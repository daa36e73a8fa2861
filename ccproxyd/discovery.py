"""Model discovery: what upstreams really serve, for model lists and ``/api/show``.

A pattern alias whose targets pass the model name through (``"*" =
["ollama/*"]``), or point at a provider with ``discover = true``, lists the
provider's own models that match the pattern. The lists come from each
upstream's model-list endpoint, fetched in the background at start and again
when ``server.discovery_ttl`` has passed; a request never waits for one, it
gets what is cached (nothing until the first fetch is done). A provider that
cannot be listed is logged once (until it can be again) and left out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import logging
import time
from dataclasses import dataclass
from typing import Callable

from .config import Alias, Config, Group, Provider
from .errors import ProxyError
from .observe import redact_secrets
from .protocols import ADAPTERS
from .protocols.base import Adapter, ModelInfo, UpstreamCall, UpstreamTarget
from .routing import PASS_THROUGH
from .shaping import finish_call
from .upstream import UpstreamClient

log = logging.getLogger("ccproxyd.discovery")

MAX_LIST_BYTES = 16 * 1024 * 1024
MAX_SHOWN = 200  # models whose details are fetched one by one (Ollama capabilities)


@dataclass(slots=True)
class _Cached:
    fetched: float  # monotonic seconds
    models: list[ModelInfo]


class Discovery:
    """The cached model lists of one worker's upstreams and the tasks refreshing them."""

    def __init__(self, upstream: UpstreamClient, clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self.clock = clock
        self.cache: dict[str, _Cached] = {}
        self.refreshing: dict[str, asyncio.Task[None]] = {}
        self.failing: set[str] = set()  # providers whose failure was logged and not yet followed by a success

    # ------------------------------------------------------------ what requests see

    def listed(self, config: Config, group: Group) -> list[ModelInfo]:
        """The discovered models the group's pattern aliases serve, first alias first, each once."""
        found: dict[str, ModelInfo] = {}
        for alias in group.aliases:
            if alias.is_pattern:
                for info in self._served(config, alias):
                    found.setdefault(info.id, info)
        return list(found.values())

    def find(self, config: Config, alias: Alias, name: str) -> ModelInfo | None:
        """What discovery knows of ``name`` served through ``alias`` (for ``/api/show``)."""
        return next((info for info in self._served(config, alias) if info.id == name), None)

    def _served(self, config: Config, alias: Alias) -> list[ModelInfo]:
        out = []
        for target in alias.targets:
            provider = config.providers[target.provider]
            if target.model != PASS_THROUGH and not provider.discover:
                continue
            for info in self._models(config, provider):
                if fnmatch.fnmatchcase(info.id, alias.name):
                    kind = "embedding" if alias.kind == "embedding" else info.kind
                    out.append(dataclasses.replace(info, kind=kind, targets=(f"{provider.name}/{info.id}",)))
        return out

    def _models(self, config: Config, provider: Provider) -> list[ModelInfo]:
        cached = self.cache.get(provider.name)
        if cached is None or self.clock() - cached.fetched >= config.server.discovery_ttl:
            self.refresh(config, provider)
        return cached.models if cached else []

    # ------------------------------------------------------------ background refresh

    def start(self, config: Config) -> None:
        """Fetch every provider's list that some model list will need, without waiting for it."""
        for provider in config.providers.values():
            if provider.discover or _passed_through(config, provider.name):
                self.refresh(config, provider)

    def refresh(self, config: Config, provider: Provider) -> None:
        if provider.name in self.refreshing:
            return
        task = asyncio.get_running_loop().create_task(self._fetch(config, provider))
        self.refreshing[provider.name] = task
        task.add_done_callback(lambda _: self.refreshing.pop(provider.name, None))

    async def close(self) -> None:
        tasks = list(self.refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _fetch(self, config: Config, provider: Provider) -> None:
        adapter = ADAPTERS[provider.protocol]
        target = UpstreamTarget(provider, "", provider.api_keys[0] if provider.api_keys else None, "discovery")
        call = adapter.encode_list_models_request(target)
        models: list[ModelInfo] = []
        try:
            if call is not None:
                models = adapter.decode_list_models(await self._get(call, provider))
                await self._add_capabilities(adapter, target, models)
        except (ProxyError, ValueError, KeyError, TypeError, AttributeError) as e:
            if provider.name not in self.failing:
                self.failing.add(provider.name)
                message = redact_secrets(getattr(e, "message", None) or f"{type(e).__name__}: {e}", config)
                log.warning("cannot list the models of provider %s (%s); they are left out of model lists", provider.name, message)
            models = []
        else:
            self.failing.discard(provider.name)
            log.debug("discovered %d models of provider %s", len(models), provider.name)
        for info in models:
            info.owned_by = provider.name
        self.cache[provider.name] = _Cached(self.clock(), models)

    async def _add_capabilities(self, adapter: Adapter, target: UpstreamTarget, models: list[ModelInfo]) -> None:
        """Per-model details where the list leaves capabilities out; a model whose details fail keeps none."""
        for info in models[:MAX_SHOWN]:
            call = adapter.encode_show_request(dataclasses.replace(target, model=info.id))
            if call is None:
                return
            try:
                capabilities = adapter.decode_show_capabilities(await self._get(call, target.provider))
            except (ProxyError, ValueError, KeyError, TypeError, AttributeError):
                continue
            if capabilities is not None:
                info.capabilities = capabilities
                info.kind = "embedding" if "embedding" in capabilities and "completion" not in capabilities else "chat"
                info.vision = "vision" in capabilities
                info.tools = "tools" in capabilities

    async def _get(self, call: UpstreamCall, provider: Provider) -> bytes:
        finish_call(call, provider, {}, "discovery")
        resp = await self.upstream.open(call, provider)
        if resp.status >= 400:
            raise ADAPTERS[provider.protocol].decode_error(resp.status, await self.upstream.read_error(resp))
        try:
            return await resp.read_all(MAX_LIST_BYTES)
        finally:
            resp.close()


def _passed_through(config: Config, provider: str) -> bool:
    return any(t.provider == provider and t.model == PASS_THROUGH for g in config.groups.values() for a in g.aliases for t in a.targets)
