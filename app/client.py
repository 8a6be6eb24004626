"""The frontend's only way to data: a typed HTTP client of the TokenPrism API.

Configured by ``TOKENPRISM_API_URL`` (default ``http://127.0.0.1:8000``) and
``TOKENPRISM_API_TOKEN`` (sent as a bearer token when set); ``TOKENPRISM_BROWSER_API_URL`` is
the API's address as the user's browser reaches it (Explore's live view streams from the
browser; default: the API URL). Failures become two exceptions the
views turn into messages: :class:`BackendUnavailable` (nothing answers) and
:class:`BackendError` (the API answered with an error).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class BackendUnavailable(Exception):
    """The backend could not be reached."""


@dataclass
class BackendError(Exception):
    """The backend answered with ``{"error": {"code", "message", ...}}``."""

    status: int
    code: str
    message: str
    problems: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)  # the error's other fields

    def __str__(self) -> str:
        return self.message


class TokenPrismClient:
    """Typed wrapper of ``/api/v1``; one instance per Streamlit process (thread-safe httpx)."""

    def __init__(
        self, base_url: str | None = None, token: str | None = None, timeout: float = 600.0
    ) -> None:
        self.base_url = (base_url or os.environ.get("TOKENPRISM_API_URL") or DEFAULT_URL).rstrip(
            "/"
        )
        token = token if token is not None else os.environ.get("TOKENPRISM_API_TOKEN")
        self.token = token or None
        self.browser_url = (os.environ.get("TOKENPRISM_BROWSER_API_URL") or self.base_url).rstrip(
            "/"
        )
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url + "/api/v1", headers=headers, timeout=timeout
        )

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            reply = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise BackendUnavailable(
                f"the TokenPrism backend at {self.base_url} is not reachable ({type(err).__name__})"
            ) from None
        if reply.status_code >= 400:
            try:
                error = reply.json()["error"]
            except (ValueError, KeyError, TypeError):
                error = {"code": "http_error", "message": reply.text[:300] or reply.reason_phrase}
            raise BackendError(
                reply.status_code,
                str(error.get("code", "error")),
                str(error.get("message", "")),
                list(error.get("problems", [])),
                {k: v for k, v in error.items() if k not in ("code", "message", "problems")},
            )
        return reply

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._request(method, path, **kwargs).json()

    # ---- service ------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return dict(self._json("GET", "/health"))

    def metrics(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/metrics"))

    # ---- runs ---------------------------------------------------------------------------

    def score(
        self,
        *,
        prompt: str | None = None,
        response: str | None = None,
        text: str | None = None,
        model: str | None = None,
        template: bool = True,
        system: str | None = None,
        metrics: list[str] | None = None,
        ccp_preset: str | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"template": template}
        if metrics:
            body["metrics"] = metrics
            if ccp_preset and "ccp" in metrics:
                body["ccp_preset"] = ccp_preset
        for key, value in (
            ("prompt", prompt),
            ("response", response),
            ("text", text),
            ("model", model),
            ("system", system),
        ):
            if value is not None:
                body[key] = value
        return dict(self._json("POST", "/runs", json=body))

    def generate(
        self,
        prompt: str,
        *,
        model: str | None = None,
        system: str | None = None,
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        metrics: list[str] | None = None,
        ccp_preset: str | None = None,
    ) -> list[dict[str, Any]]:
        body: dict[str, Any] = {
            "metrics": metrics or None,
            "prompt": prompt,
            "n": n,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
        }
        if ccp_preset and metrics and "ccp" in metrics:
            body["ccp_preset"] = ccp_preset
        for key, value in (("model", model), ("system", system), ("seed", seed)):
            if value is not None:
                body[key] = value
        return list(self._json("POST", "/generate", json=body)["runs"])

    def runs(
        self,
        *,
        q: str | None = None,
        kind: str | None = None,
        model: str | None = None,
        upload_id: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        params = {
            k: v
            for k, v in {
                "q": q,
                "kind": kind,
                "model": model,
                "upload_id": upload_id,
                "limit": limit,
                "offset": offset,
            }.items()
            if v not in (None, "")
        }
        return dict(self._json("GET", "/runs", params=params))

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/runs/{run_id}"))

    def delete_run(self, run_id: str) -> None:
        self._request("DELETE", f"/runs/{run_id}")

    # ---- uploads and jobs ---------------------------------------------------------------

    def upload(
        self,
        filename: str,
        data: bytes,
        *,
        model: str | None = None,
        metrics: list[str] | None = None,
        engine: str = "local",
        skip_invalid: bool = False,
        ccp_preset: str | None = None,
    ) -> dict[str, Any]:
        form = {"model": model} if model else {}
        if skip_invalid:
            form["skip_invalid"] = "true"
        if metrics:
            form["metrics"] = ",".join(metrics)
            if ccp_preset and "ccp" in metrics:
                form["ccp_preset"] = ccp_preset
        if engine != "local":
            form["engine"] = engine
        return dict(self._json("POST", "/uploads", files={"file": (filename, data)}, data=form))

    def add_metrics(
        self,
        upload_id: str,
        metrics: list[str],
        *,
        ccp_preset: str | None = None,
        probe: str | None = None,
        run_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        """Add metric families to an upload's stored turns: the job (or why none was needed)."""
        body: dict[str, Any] = {"metrics": metrics}
        if ccp_preset:
            body["ccp_preset"] = ccp_preset
        if probe:
            body["probe"] = probe
        if run_ids is not None:
            body["run_ids"] = run_ids
        return dict(self._json("POST", f"/uploads/{upload_id}/metrics", json=body))

    def uploads(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self._json("GET", "/uploads", params={"limit": limit})["uploads"])

    def upload_summary(
        self,
        upload_id: str,
        *,
        metric: str = "mean_entropy",
        token_metric: str = "entropy",
        top: int = 20,
    ) -> dict[str, Any]:
        params = {"metric": metric, "token_metric": token_metric, "top": top}
        return dict(self._json("GET", f"/uploads/{upload_id}", params=params))

    def export(
        self,
        upload_id: str,
        fmt: str,
        *,
        metric: str = "mean_entropy",
        token_metric: str = "entropy",
    ) -> bytes:
        params = {"format": fmt, "metric": metric, "token_metric": token_metric}
        return self._request("GET", f"/uploads/{upload_id}/export", params=params).content

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/jobs/{job_id}"))

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("POST", f"/jobs/{job_id}/cancel"))

    def resume_job(self, job_id: str) -> dict[str, Any]:
        return dict(self._json("POST", f"/jobs/{job_id}/resume"))

    # ---- probes -------------------------------------------------------------------------

    def probes(self) -> list[dict[str, Any]]:
        return list(self._json("GET", "/probes"))

    def probe(self, name: str) -> dict[str, Any]:
        return dict(self._json("GET", f"/probes/{name}"))

    def train_probe(
        self,
        filename: str,
        data: bytes,
        *,
        name: str,
        model: str | None = None,
        layer: str | None = None,
        epochs: int = 20,
        ccp: bool = True,
    ) -> dict[str, Any]:
        form: dict[str, Any] = {"name": name, "epochs": str(epochs), "ccp": str(ccp).lower()}
        if model:
            form["model"] = model
        if layer:
            form["layer"] = layer
        return dict(self._json("POST", "/probes", files={"file": (filename, data)}, data=form))

    def apply_probe(self, run_id: str, probe: str | None = None) -> dict[str, Any]:
        return dict(self._json("POST", f"/runs/{run_id}/probe", json={"probe": probe}))

    # ---- logit lens and attribution --------------------------------------------------------

    def lens(self, run_id: str, start: int = 0, limit: int = 1024) -> dict[str, Any] | None:
        """The stored logit lens of positions ``start..start+limit-1`` (None: not computed)."""
        try:
            return dict(
                self._json("GET", f"/runs/{run_id}/lens", params={"start": start, "limit": limit})
            )
        except BackendError as err:
            if err.status == 404 and "no lens" in err.message:
                return None
            raise

    def compute_lens(self, run_id: str) -> dict[str, Any]:
        """Compute the lens: its summary, or ``{"job_id"}`` when the run is long (a job)."""
        return dict(self._json("POST", f"/runs/{run_id}/lens"))

    def attribute(self, run_id: str, position: int, **options: Any) -> dict[str, Any]:
        """Attribute a token (``AttributionBody``: method, steps, foil, ...): the result, or
        ``{"job_id"}`` when it is expensive (a job)."""
        body = {"position": position, **{k: v for k, v in options.items() if v is not None}}
        return dict(self._json("POST", f"/runs/{run_id}/attributions", json=body))

    def attributions(self, run_id: str, position: int | None = None) -> list[dict[str, Any]]:
        """Stored attributions of a run (of one target position), newest first."""
        params = {} if position is None else {"position": position}
        reply = self._json("GET", f"/runs/{run_id}/attributions", params=params)
        return list(reply["attributions"])

    # ---- groups -------------------------------------------------------------------------

    def group_prompts(self) -> list[dict[str, Any]]:
        """The shipped verifiable prompts: ``id``, ``kind``, ``prompt``, ``verifier``."""
        return list(self._json("GET", "/groups/prompts"))

    def create_group(self, **params: Any) -> dict[str, Any]:
        """Start sampling a group (``GroupBody`` fields: prompt, verifier, n, ...); the job."""
        return dict(self._json("POST", "/groups", json=params))

    def groups(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent groups, newest first."""
        return list(self._json("GET", "/groups", params={"limit": limit})["groups"])

    def group(self, group_id: str) -> dict[str, Any]:
        """A group: responses with their tokens, summary, prefix tree, rollouts, cDPO."""
        return dict(self._json("GET", f"/groups/{group_id}"))

    def group_rollouts(self, group_id: str, **params: Any) -> dict[str, Any]:
        """Start a rollout job (``RolloutBody`` fields: run_id, k, budget, ...); the job."""
        return dict(self._json("POST", f"/groups/{group_id}/rollouts", json=params))

    def group_contrastive(self, group_id: str, **params: Any) -> dict[str, Any]:
        """Start training the cDPO adapters (``ContrastiveBody`` fields); the job."""
        return dict(self._json("POST", f"/groups/{group_id}/contrastive", json=params))

    # ---- steering & decoding lab -----------------------------------------------------------

    def experiment_prompts(self) -> list[dict[str, Any]]:
        """The shipped refusal prompts: ``id``, ``prompt``, ``should_refuse``, ``category``."""
        return list(self._json("GET", "/experiments/prompts"))

    def create_experiment(
        self, kind: str, params: dict[str, Any], *, model: str | None = None
    ) -> dict[str, Any]:
        """Start a ``refusal-sweep``, ``east-sweep`` or ``decode`` experiment; the job."""
        body: dict[str, Any] = {"kind": kind, "params": params}
        if model:
            body["model"] = model
        return dict(self._json("POST", "/experiments", json=body))

    def experiments(self, limit: int = 50) -> list[dict[str, Any]]:
        """Recent experiments, newest first: id, kind, model, created_at, finished."""
        return list(self._json("GET", "/experiments", params={"limit": limit})["experiments"])

    def experiment(self, experiment_id: str) -> dict[str, Any]:
        """An experiment: kind, params, summary (the curves) and its outputs (runs)."""
        return dict(self._json("GET", f"/experiments/{experiment_id}"))

    def vectors(self) -> list[dict[str, Any]]:
        """Saved steering vectors (their summaries)."""
        return list(self._json("GET", "/vectors"))

    def create_vector(self, **body: Any) -> dict[str, Any]:
        """Compute and save a steering vector (``VectorBody``: name, kind, layer, prompts, ...)."""
        return dict(self._json("POST", "/vectors", json=body))

    # ---- diffs --------------------------------------------------------------------------

    def create_diff(self, **body: Any) -> dict[str, Any]:
        """Start a diff job (``DiffBody``: against, model, text | run_id | upload_id)."""
        return dict(self._json("POST", "/diffs", json=body))

    def diff(self, diff_id: str, max_runs: int = 20) -> dict[str, Any]:
        """A diff: models, summary, runs with per-token values."""
        return dict(self._json("GET", f"/diffs/{diff_id}", params={"max_runs": max_runs}))

    # ---- sql ----------------------------------------------------------------------------

    def sql(self, query: str, max_rows: int = 1000) -> dict[str, Any]:
        return dict(self._json("POST", "/sql", json={"query": query, "max_rows": max_rows}))
