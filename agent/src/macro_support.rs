//! Items the macros (`probe!`, `#[instrument]`, `#[timed]`, `#[track_errors]`) expand to,
//! re-exported as `sonde_agent::__macro_support`. Not a public API.

pub use crate::site::capture::{Capture, DebugCapture, DisplayCapture, Redacted};
pub use crate::site::{FieldSlot, SITES, Site};
pub use linkme;
pub use sonde_expr::Value;
pub use std::{borrow::Cow, time::Instant};

/// Runs an `#[instrument]`ed body. Taking `FnOnce() -> R` fixes the closure's return type
/// (so `?` in the body converts errors as in the function) and lets the body move out of
/// its captures (so it may return references reborrowed from its arguments).
#[inline(always)]
pub fn call_once<R, F: FnOnce() -> R>(f: F) -> R {
    f()
}

/// A `#[timed]` call site: its name, help and tags, and its timer, resolved from
/// [`metrics::global`](crate::metrics::global) on the first call and kept for the life of
/// the process (so a hit is a clock read and a histogram observe).
#[derive(Debug)]
pub struct TimedSite {
    timer: std::sync::OnceLock<crate::metrics::Timer>,
    name: &'static str,
    help: &'static str,
    keys: &'static [&'static str],
    values: &'static [&'static str],
}

impl TimedSite {
    /// A site; `keys` and `values` are its tags, in the same order.
    pub const fn new(
        name: &'static str,
        help: &'static str,
        keys: &'static [&'static str],
        values: &'static [&'static str],
    ) -> Self {
        Self {
            timer: std::sync::OnceLock::new(),
            name,
            help,
            keys,
            values,
        }
    }

    /// Starts timing a call: the guard records the time since now when it drops.
    #[inline]
    pub fn start(&'static self) -> TimedGuard {
        let timer = match self.timer.get() {
            Some(timer) => timer,
            None => self.resolve(),
        };
        TimedGuard {
            timer,
            started: Instant::now(),
        }
    }

    #[cold]
    #[inline(never)]
    fn resolve(&'static self) -> &'static crate::metrics::Timer {
        self.timer.get_or_init(|| {
            let metrics = crate::metrics::global();
            if self.keys.is_empty() {
                metrics.timer(self.name, self.help)
            } else {
                metrics
                    .timer_vec(self.name, self.help, self.keys)
                    .with(self.values)
            }
        })
    }
}

/// Records the time since a `#[timed]` call started when it drops: on return, on unwinding,
/// and when an `async fn`'s future is dropped before it completes. Unlike
/// [`Stopwatch`](crate::metrics::Stopwatch) it borrows its site's timer rather than cloning it.
#[derive(Debug)]
#[must_use = "the duration is recorded when this guard drops"]
pub struct TimedGuard {
    timer: &'static crate::metrics::Timer,
    started: Instant,
}

impl Drop for TimedGuard {
    #[inline]
    fn drop(&mut self) {
        self.timer.record(self.started.elapsed());
    }
}

/// A `#[track_errors]` call site: the counter's name and help, the function's name, and the
/// counter, resolved from [`metrics::global`](crate::metrics::global) on the first `Err`.
#[derive(Debug)]
pub struct ErrorSite {
    counter: std::sync::OnceLock<crate::metrics::CounterVec>,
    name: &'static str,
    help: &'static str,
    function: &'static str,
}

impl ErrorSite {
    /// The tag keys, in the order of the values passed to the counter.
    const KEYS: &'static [&'static str] = &["function", "error"];

    /// A site.
    pub const fn new(name: &'static str, help: &'static str, function: &'static str) -> Self {
        Self {
            counter: std::sync::OnceLock::new(),
            name,
            help,
            function,
        }
    }

    /// Counts `ret` if it is an `Err`, tagged with the error's type name.
    #[inline]
    pub fn by_type<T, E>(&'static self, ret: &Result<T, E>) {
        if ret.is_err() {
            self.count(&short_type_name(std::any::type_name::<E>()));
        }
    }

    /// Counts `ret` if it is an `Err`, tagged with the leading identifier of the error's
    /// `Debug` rendering (an enum's variant), or its type name when that does not start
    /// with one.
    #[inline]
    pub fn by_variant<T, E: std::fmt::Debug>(&'static self, ret: &Result<T, E>) {
        if let Err(e) = ret {
            self.count_variant(e);
        }
    }

    #[cold]
    #[inline(never)]
    fn count_variant<E: std::fmt::Debug>(&'static self, e: &E) {
        let mut ident = LeadingIdent::default();
        // Stops (with an error, ignored) at the first character that is not part of it.
        let _ = std::fmt::write(&mut ident, format_args!("{e:?}"));
        match ident.as_str() {
            "" => self.count(&short_type_name(std::any::type_name::<E>())),
            variant => self.count(variant),
        }
    }

    #[cold]
    #[inline(never)]
    fn count(&'static self, error: &str) {
        let counter = self
            .counter
            .get_or_init(|| crate::metrics::global().counter_vec(self.name, self.help, Self::KEYS));
        counter.add(&[self.function, error], 1.0);
    }
}

/// The leading identifier of what is written to it, up to 64 bytes, on the stack.
#[derive(Debug)]
struct LeadingIdent {
    buf: [u8; 64],
    len: usize,
}

impl Default for LeadingIdent {
    fn default() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }
}

impl LeadingIdent {
    fn as_str(&self) -> &str {
        // Only ASCII is written to `buf`.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for LeadingIdent {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        for b in s.bytes() {
            let ident =
                b == b'_' || b.is_ascii_alphabetic() || (self.len > 0 && b.is_ascii_digit());
            if !ident || self.len == self.buf.len() {
                return Err(std::fmt::Error);
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// A type name with every path shortened to its last segment:
/// `alloc::boxed::Box<dyn core::error::Error>` becomes `Box<dyn Error>`. Borrows when the
/// name has no generic arguments (the common case), so counting an error allocates nothing.
pub fn short_type_name(name: &'static str) -> Cow<'static, str> {
    if !name.contains(['<', '(', '[', '&', ' ']) {
        return Cow::Borrowed(name.rsplit("::").next().unwrap_or(name));
    }
    let mut out = String::with_capacity(name.len());
    // Where the path segment being written started in `out`.
    let mut segment = 0;
    let mut rest = name;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("::") {
            out.truncate(segment);
            rest = after;
            continue;
        }
        if !(c == '_' || c.is_alphanumeric()) {
            segment = out.len() + c.len_utf8();
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// Fixes an `#[instrument]`ed `async fn` body's output type (so `?` in it converts errors).
#[inline(always)]
pub fn typed_future<R, F: std::future::Future<Output = R>>(f: F) -> F {
    f
}

/// An `#[instrument]`ed function's return value, on its way to the exit site. Which of the
/// `Ret*` traits' `__sonde_ret` a call on `&&&&Ret(&value)` picks depends on the type, the
/// first that applies winning (autoref specialization): `RetCapture` for a type that
/// implements [`Capture`] (the value itself, `ok` true); `RetResult` for a `Result` whose
/// `Ok` type does (the `Ok` value or none, `ok` whether it is `Ok`); `RetResultAny` for any
/// other `Result` (none, `ok`); `RetAny` for anything else (none, `ok` true).
#[derive(Debug)]
pub struct Ret<'a, T>(pub &'a T);

/// See [`Ret`].
pub trait RetCapture<'a> {
    /// The value to capture as `ret`, and `ok`.
    fn __sonde_ret(&self) -> (&'a dyn Capture, bool);
}
impl<'a, T: Capture> RetCapture<'a> for &&&Ret<'a, T> {
    fn __sonde_ret(&self) -> (&'a dyn Capture, bool) {
        (self.0, true)
    }
}

/// See [`Ret`].
pub trait RetResult<'a> {
    /// The value to capture as `ret`, and `ok`.
    fn __sonde_ret(&self) -> (&'a dyn Capture, bool);
}
impl<'a, T: Capture, E> RetResult<'a> for &&Ret<'a, Result<T, E>> {
    fn __sonde_ret(&self) -> (&'a dyn Capture, bool) {
        match self.0 {
            Ok(v) => (v, true),
            Err(_) => (&(), false),
        }
    }
}

/// See [`Ret`].
pub trait RetResultAny<'a> {
    /// The value to capture as `ret`, and `ok`.
    fn __sonde_ret(&self) -> (&'a dyn Capture, bool);
}
impl<'a, T, E> RetResultAny<'a> for &Ret<'a, Result<T, E>> {
    fn __sonde_ret(&self) -> (&'a dyn Capture, bool) {
        (&(), self.0.is_ok())
    }
}

/// See [`Ret`].
pub trait RetAny<'a> {
    /// The value to capture as `ret`, and `ok`.
    fn __sonde_ret(&self) -> (&'a dyn Capture, bool);
}
impl<'a, T> RetAny<'a> for Ret<'a, T> {
    fn __sonde_ret(&self) -> (&'a dyn Capture, bool) {
        (&(), true)
    }
}
