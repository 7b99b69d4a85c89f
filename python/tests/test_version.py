"""The module reports the library's one version: Cargo.toml's [workspace.package] version."""

from __future__ import annotations

import importlib.metadata
import pathlib
import re

import etcd_registry


def cargo_version() -> str:
    cargo = pathlib.Path(__file__).resolve().parents[2] / "Cargo.toml"
    section = cargo.read_text().split("[workspace.package]", 1)[1]
    match = re.search(r'^version = "([^"]+)"', section, re.MULTILINE)
    assert match, f"no [workspace.package] version in {cargo}"
    return match.group(1)


def test_version_is_the_cargo_version() -> None:
    assert etcd_registry.__version__ == cargo_version()


def test_version_is_the_installed_distribution_version() -> None:
    assert importlib.metadata.version("etcd-registry") == etcd_registry.__version__
