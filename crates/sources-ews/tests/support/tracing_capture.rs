//! What calbridge logs on a test's thread, for assertions on log lines: [`LogCapture`] collects
//! the events of targets `calbridge…` as `LEVEL target: field=value …` lines until dropped, and
//! [`install_log_capture`] installs the process-wide subscriber that feeds it.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};

thread_local! {
    /// Where the events of this thread go while a test captures them.
    static CAPTURED: RefCell<Option<Arc<Mutex<Vec<String>>>>> = const { RefCell::new(None) };
}

/// The process's subscriber: hands calbridge's events (targets `calbridge…`) to the capture
/// of the thread they happen on. A test's runtime runs on its own thread, emulator included.
struct ThreadCapture;

/// Installs [`ThreadCapture`] before anything logs: a call site first reached while no
/// subscriber is installed can stay silenced for good, which would blind a log assertion.
pub fn install_log_capture() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let _ = tracing::subscriber::set_global_default(ThreadCapture);
    });
}

struct FieldText<'a>(&'a mut String);

impl tracing::field::Visit for FieldText<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, " {}={value:?}", field.name());
    }
}

impl tracing::Subscriber for ThreadCapture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let target = event.metadata().target();
        if !target.starts_with("calbridge") {
            return;
        }
        CAPTURED.with(|captured| {
            if let Some(lines) = captured.borrow().as_ref() {
                let mut line = format!("{} {target}:", event.metadata().level());
                event.record(&mut FieldText(&mut line));
                lines.lock().unwrap().push(line);
            }
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// What calbridge logs on this test's thread until dropped.
pub struct LogCapture(Arc<Mutex<Vec<String>>>);

impl LogCapture {
    pub fn start() -> LogCapture {
        install_log_capture();
        let lines = Arc::new(Mutex::new(Vec::new()));
        CAPTURED.with(|captured| *captured.borrow_mut() = Some(Arc::clone(&lines)));
        LogCapture(lines)
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

impl Drop for LogCapture {
    fn drop(&mut self) {
        CAPTURED.with(|captured| *captured.borrow_mut() = None);
    }
}
