//! Map core errors to PostgreSQL ERRORs with a SQLSTATE, a message and a hint.

use genome_core::Error;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

/// True once a cancel (statement_timeout, pg_cancel_backend) or termination is pending. The one
/// cancel check of pg_genome: also read from other threads (clustering stages, the model-run
/// watchdog), so it only reads the signal flags and never calls into PostgreSQL.
pub fn interrupt_pending() -> bool {
    unsafe {
        std::ptr::read_volatile(std::ptr::addr_of!(pgrx::pg_sys::QueryCancelPending)) != 0
            || std::ptr::read_volatile(std::ptr::addr_of!(pgrx::pg_sys::ProcDiePending)) != 0
    }
}

pub fn report(e: Error) -> ! {
    report_in(e, None)
}

/// As [`report`], with the failing item named before the message ("image 3: invalid image: ...").
pub fn report_in(e: Error, context: Option<String>) -> ! {
    if matches!(e, Error::Interrupted) {
        // PostgreSQL's own ERROR (or FATAL for a termination), with its usual message
        pgrx::pg_sys::check_for_interrupts!();
    }
    let (code, hint) = match &e {
        Error::Interrupted => (PgSqlErrorCode::ERRCODE_QUERY_CANCELED, None),
        Error::RuntimeLoad { .. } => (
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            Some("set genome.onnxruntime_library to the path of libonnxruntime.so (ONNX Runtime >= 1.24)"),
        ),
        Error::Config(_) => (PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, None),
        Error::Tokenizer(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            Some("the tokenizer must be a Hugging Face tokenizer.json"),
        ),
        Error::ModelLoad(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            Some("the model's ONNX bytes could not be parsed; re-register it from a valid .onnx file"),
        ),
        Error::ModelMismatch(_) => (
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            Some("fix the model's config (output_name, input_names, pooling, dimension) in genome.models"),
        ),
        Error::Provider { .. } => (
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            Some("SET genome.execution_provider = 'cpu' to run on the CPU"),
        ),
        Error::Inference(_) => (PgSqlErrorCode::ERRCODE_EXTERNAL_ROUTINE_EXCEPTION, None),
        Error::Image(_) => (
            PgSqlErrorCode::ERRCODE_INVALID_BINARY_REPRESENTATION,
            Some("pass the bytes of a complete JPEG, PNG or WebP file"),
        ),
        Error::ImageLimit(_) => (
            PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            Some("downscale the image, or have a superuser raise genome.max_image_pixels / genome.max_image_bytes"),
        ),
    };
    let msg = match context {
        Some(c) => format!("pg_genome: {c}: {e}"),
        None => format!("pg_genome: {e}"),
    };
    let mut r = ErrorReport::new(code, msg, "pg_genome");
    if let Some(h) = hint {
        r = r.set_hint(h);
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn raise(code: PgSqlErrorCode, msg: String, hint: Option<String>) -> ! {
    let mut r = ErrorReport::new(code, format!("pg_genome: {msg}"), "pg_genome");
    if let Some(h) = hint {
        r = r.set_hint(h);
    }
    r.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub trait OrReport<T> {
    fn or_report(self) -> T;
}

impl<T> OrReport<T> for genome_core::Result<T> {
    fn or_report(self) -> T {
        self.unwrap_or_else(|e| report(e))
    }
}

/// The one way pg_genome handles a failed SPI call: an ERROR that says what was being done. Never
/// a default value in its place (a failed lock attempt is not "another job holds the lock").
pub fn spi<T>(doing: &str, r: Result<T, pgrx::spi::SpiError>) -> T {
    r.unwrap_or_else(|e| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("{doing} failed: {e}"),
            None,
        )
    })
}

/// [`spi`] as a method: `Spi::get_one(...).or_raise("reading X")`.
pub trait OrRaise<T> {
    fn or_raise(self, doing: &str) -> T;
}

impl<T> OrRaise<T> for Result<T, pgrx::spi::SpiError> {
    fn or_raise(self, doing: &str) -> T {
        spi(doing, self)
    }
}

/// A value a statement must return (a count, an INSERT's RETURNING): an ERROR when it returned
/// none, never a default.
pub fn required<T>(doing: &str, r: Result<Option<T>, pgrx::spi::SpiError>) -> T {
    spi(doing, r).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
            format!("{doing} returned no value"),
            None,
        )
    })
}
