"""Playbooks: the YAML model, its step types, the runner, the run journal and the window.

A core package: it knows nothing of repositories or snapshots; upgrade/ composes it with
them. May import engines, sandbox and the root modules.
"""
