"""Java, which Spark needs: find it and say how to install it when it is missing."""

from __future__ import annotations

import re
import shutil
import subprocess

MIN_JAVA = 17
INSTALL_HINT = (
    f"Spark needs Java {MIN_JAVA} or newer. Install it, for example:\n"
    "  Debian/Ubuntu:  sudo apt-get install -y openjdk-17-jre-headless\n"
    "  Fedora/RHEL:    sudo dnf install -y java-17-openjdk-headless\n"
    "  macOS:          brew install openjdk@17\n"
    "or point JAVA_HOME at an existing installation."
)


def java_major_version(java: str | None = None) -> int | None:
    """The major version of the `java` on PATH (or the given binary), None when there is none."""
    binary = java or shutil.which("java")
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2)) if major == 1 and match.group(2) else major  # "1.8" means 8


def java_problem() -> str | None:
    """None when a usable Java is installed, else what is wrong and how to fix it."""
    version = java_major_version()
    if version is None:
        return f"Java was not found on PATH.\n{INSTALL_HINT}"
    if version < MIN_JAVA:
        return f"Java {version} was found, but {MIN_JAVA}+ is needed.\n{INSTALL_HINT}"
    return None
