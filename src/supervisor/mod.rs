//! The master process: spawns and watches workers, and talks to systemd.

pub(crate) mod systemd;
