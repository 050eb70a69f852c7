use clap::{Parser, Subcommand};
use textrec_contract::exit;

/// Train, evaluate and serve the textrec text-line recognizer.
#[derive(Parser)]
#[command(name = "textrec-worker", version, about, long_about = None)]
struct Cli {
    /// Log as JSON lines instead of human-readable text (the default inside Kubernetes).
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
    Serve(textrec_worker::serve::ServeArgs),
    /// Render synthetic lines into a tesstrain folder (NAME.png + NAME.gt.txt).
    Synth(textrec_worker::synth::SynthArgs),
}

fn main() {
    let cli = Cli::parse();
    textrec_worker::logging::init(cli.log_json);
    let result = match cli.command {
        Command::Train(a) => textrec_worker::train::run(a),
        Command::Eval(a) => textrec_worker::eval::run(a),
        Command::Recognize(a) => textrec_worker::recognize::run(a),
        Command::Serve(a) => textrec_worker::serve::run(a),
        Command::Synth(a) => textrec_worker::synth::run(a),
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
