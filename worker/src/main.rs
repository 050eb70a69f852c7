use clap::{Parser, Subcommand};
use textrec_contract::exit;

/// Train, evaluate and serve the textrec text-line recognizer.
#[derive(Parser)]
#[command(name = "textrec-worker", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true, env = "TEXTREC_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train one trial; resumes from the newest complete checkpoint under --output.
    Train(textrec_worker::train::TrainArgs),
    /// Measure CER/WER of a model over a tesstrain folder.
    Eval(textrec_worker::eval::EvalArgs),
    /// Print the text of images, with a local model or a running server.
    Recognize(textrec_worker::recognize::RecognizeArgs),
    /// Serve a model over gRPC and HTTP, with a demo page.
    Serve(Box<textrec_worker::serve::ServeArgs>),
    /// Render synthetic lines into a tesstrain folder (NAME.png + NAME.gt.txt).
    Synth(textrec_worker::synth::SynthArgs),
    /// Count a character language model over the training text and add it to a model folder
    /// (for `--decode ctc-lm`).
    Lm(textrec_worker::lm::LmArgs),
}

// jemalloc serves every allocation of the process, libtorch's included (its unprefixed `malloc`
// is what libtorch's calls resolve to). Under glibc's malloc, training's activations of
// ever-changing shapes fragment the heap: the trainer's resident memory grows to several times
// what it uses (3.9 GB against 1.4 GB for the `small` preset at batch 16).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options for every command; `MALLOC_CONF` in the environment still overrides them.
/// jemalloc reads this symbol as a `const char *`. The first two are for the trainer, whose
/// activations of ever-changing sizes are freed and reallocated every step (BENCHMARKS.md,
/// "Over a whole run"):
/// - `oversize_threshold:0` serves blocks over 8 MiB (a training batch's full-resolution
///   activations) from the thread's own arena instead of a separate one, so the freed pages of
///   both sizes form one pool: peak RSS drops by about 95 MiB at the same speed.
/// - `lg_extent_max_active_fit:8` lets a request split a free block up to 256 times its size
///   (jemalloc's default: 64) instead of taking fresh pages while large freed blocks sit idle:
///   over the recipe's first 300 steps the trainer's peak stays at 977-982 MiB, against
///   985-1001 MiB and climbing with the default. Ratios of 10 and up lose the gain, 4 and
///   below take far more memory.
///
/// The third is for reading (`eval`, `recognize`, `serve`), which frees a line's activations
/// after every line and allocates them again for the next:
/// - `muzzy_decay_ms:-1` hands freed pages back lazily (`MADV_FREE`: the kernel takes them when
///   it needs the memory, and counts them as reclaimable meanwhile) instead of at once
///   (`MADV_DONTNEED`, jemalloc's default), which faulted and zeroed every page again on the
///   next line: about a seventh of `eval`'s CPU time went to the kernel (BENCHMARKS.md,
///   "Freed pages when reading").
#[export_name = "malloc_conf"]
static MALLOC_CONF: &[u8; 66] =
    b"oversize_threshold:0,lg_extent_max_active_fit:8,muzzy_decay_ms:-1\0";

/// Keep freed pages instead of returning them to the kernel over time. A training step frees
/// and reallocates the same activation sizes every step; returning them (jemalloc's default
/// decay) costs a page fault per page per step, about a fifth of the CPU trainer's speed. A
/// server keeps jemalloc's 10 s decay, so memory a burst of large requests took is handed back
/// (lazily, see `muzzy_decay_ms` above).
fn keep_freed_pages() {
    // SAFETY: every key written names an `ssize_t` option, and `arenas.narenas` an `unsigned`.
    let write = |key: &str| unsafe {
        tikv_jemalloc_ctl::raw::write(format!("{key}\0").as_bytes(), -1isize)
    };
    // Arenas created from now on (one per thread, and the one for allocations over 8 MiB)...
    for key in ["arenas.dirty_decay_ms", "arenas.muzzy_decay_ms"] {
        if let Err(e) = write(key) {
            tracing::warn!("jemalloc {key}: {e}");
        }
    }
    // ...and those that exist already: the main thread's, which runs the forward passes. The
    // others are not created yet and refuse the write; they get the defaults above.
    let arenas: u32 = unsafe { tikv_jemalloc_ctl::raw::read(b"arenas.narenas\0") }.unwrap_or(0);
    for i in 0..arenas {
        let _ = write(&format!("arena.{i}.dirty_decay_ms"));
        let _ = write(&format!("arena.{i}.muzzy_decay_ms"));
    }
}

fn main() {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Train(_)) {
        textrec_worker::train::kernel_caches::bound_for_training();
    }
    textrec_worker::logging::init(cli.log_json);
    let result = match cli.command {
        Command::Train(a) => {
            keep_freed_pages();
            textrec_worker::train::run(a)
        }
        Command::Eval(a) => textrec_worker::eval::run(a),
        Command::Recognize(a) => textrec_worker::recognize::run(a),
        Command::Serve(a) => textrec_worker::serve::run(*a),
        Command::Synth(a) => textrec_worker::synth::run(a),
        Command::Lm(a) => textrec_worker::lm::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let code = exit::code_for(&e);
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            std::process::exit(code);
        }
    }
}

#[cfg(test)]
mod tests {
    /// The compiled-in options reach jemalloc (a renamed symbol would silently drop them).
    #[test]
    fn the_compiled_in_options_reach_jemalloc() {
        if std::env::var_os("MALLOC_CONF").is_some() {
            return; // the environment overrides the compiled-in options
        }
        // SAFETY: `opt.oversize_threshold` is a `size_t`.
        let threshold: usize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.oversize_threshold\0") }.unwrap();
        assert_eq!(threshold, 0);
        // SAFETY: `opt.lg_extent_max_active_fit` is a `size_t`.
        let fit: usize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.lg_extent_max_active_fit\0") }.unwrap();
        assert_eq!(fit, 8);
        // SAFETY: `opt.muzzy_decay_ms` is an `ssize_t`.
        let muzzy: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.muzzy_decay_ms\0") }.unwrap();
        assert_eq!(muzzy, -1);
    }
}
