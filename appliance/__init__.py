"""appliance: offline, air-gapped bundle, installer and agent runtime for LLM agents.

Stages, each importable on its own:

    appliance.spec     the bundle spec (appliance.toml), parsed by pydantic
    appliance.bundle   build a signed, hash-pinned bundle on a connected host
    appliance.verify   verify a bundle on the box before anything of it runs
    appliance.install  install a verified bundle offline, roll back
    appliance.harness  the offline agent loop on vLLM's OpenAI-compatible API
    appliance.export   list, show and export recorded runs
"""

__version__ = "0.1.0"
