//! Sonde's in-process agent. Not built yet: probe sites, the hit pipeline and providers are issue 4.
#![forbid(unsafe_code)]
