"""Peak resident memory of this process, for the bench scripts.

`resource.getrusage(RUSAGE_SELF).ru_maxrss` is the wrong number here: Linux carries it across
`execve`, so a script started by the Rust bench (fork + exec) reports at least the Rust side's
resident memory at the moment it was spawned. `VmHWM` in `/proc/self/status` belongs to the
address space, which `execve` replaces, so it is this interpreter's own peak.
"""

import resource


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
