//! `etcd-registry`: list, watch and register service nodes in etcd from a shell, in the wire
//! format of the etcd-registry library (and go.lumeweb.com/etcd-registry).
//!
//! Every rule (names, TTLs, endpoints, retries) lives in the library; this program only turns
//! flags into a `Config`, calls the library, and prints lines.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use etcd_registry::{
    Config, Error, ErrorKind, Info, Node, PemSource, Registry, StatusEvent, WatchEvent,
    WatchEventKind,
};

/// The fields of a JSON line, in the order given (`"event"` or `"name"` first).
macro_rules! obj {
    ($($key:literal : $value:expr),* $(,)?) => {
        &[$(($key, serde_json::json!($value))),*][..]
    };
}

/// Success (and for `watch`/`register`, stopped by SIGINT, SIGTERM or SIGHUP after cleaning up).
const EXIT_OK: u8 = 0;
/// etcd answered with an error, or any other failure at run time.
const EXIT_ERROR: u8 = 1;
/// Bad command line or bad argument (clap's own code for usage errors).
const EXIT_USAGE: u8 = 2;
/// etcd could not be reached: connection refused or broken, or no answer within --timeout.
const EXIT_UNREACHABLE: u8 = 3;
/// etcd rejected the credentials or the permission.
const EXIT_AUTH: u8 = 4;
/// The TLS handshake failed: etcd's certificate not trusted, not valid for its name, or
/// expired; or etcd refused the client certificate (or its absence).
const EXIT_TLS: u8 = 5;

const AFTER_HELP: &str = "\
Output formats:
  One line per node, event or service. With --json, one JSON object per line:
    list      {\"name\":\"node-1\",\"info\":{\"address\":\"10.0.0.5:8080\"}}
    watch     {\"event\":\"added\",\"name\":\"node-1\",\"info\":{…},\"revision\":7}
              (event: added | updated | removed | resynced)
    register  {\"event\":\"registered\",\"key\":\"/services/api/node-1\",\"lease_id\":…,
               \"lease_id_hex\":\"54dc8a4b7d3e2f06\",\"ttl\":30}
              (event: registered | failed | keepalive_lost | retrying | reregistered | unregistered)
              (lease_id is a 64-bit integer that jq and JavaScript round: use lease_id_hex,
              the same id in hex as etcdctl prints it, wherever lease_id appears)
    services  {\"service\":\"api\"}
  Errors go to stderr as one line: `etcd-registry: <kind>: <message>` for an error of etcd or
  the library, `etcd-registry: <message>` for one of the tool itself.

Exit status:
  0  success; `watch` and `register` exit 0 when stopped by SIGINT (Ctrl-C), SIGTERM or SIGHUP,
     after unregistering. `list` of a service without nodes prints nothing and exits 0.
  1  etcd answered with an error, or another failure at run time
  2  usage error: unknown flag, missing or bad argument (empty name, KEY=VALUE without '=',
     --ttl 0, malformed endpoint, password without user)
  3  etcd unreachable: connection refused or broken, or no answer within --timeout; also
     `register` interrupted while etcd is down after its key was put, or interrupted a second
     time (SIGINT or SIGTERM) while it waits for etcd to delete its key (the key goes when the
     lease expires). Interrupted before its key was ever put, it has nothing to delete: 0.
  4  authentication failed or permission denied (`register` exits at once instead of retrying,
     also when etcd refuses the credentials at a later write, e.g. a re-registration)
  5  TLS handshake failed: etcd's certificate is not signed by --cacert, not valid for the
     endpoint's name (see --tls-server-name) or expired, or etcd refused the client certificate
     or its absence (`register` exits at once instead of retrying, as for 4, but only before
     the node was first registered; after that it retries, reading the files again for each
     new connection)

Environment:
  Every connection option can come from the variable named in its help; an option given on
  the command line wins over any variable, and a variable set to the empty string counts as
  unset. The password is better given through ETCD_PASSWORD or --password-file than on the
  command line, where other users can see it. Logs of the library go to stderr at the level of
  --log (ETCD_REGISTRY_LOG).";

#[derive(Debug, Parser)]
#[command(
    name = "etcd-registry",
    version,
    about = "Register, list and watch service nodes in etcd",
    long_about = "Register, list and watch service nodes in etcd.\n\n\
        Nodes live under <base-path>/<service>/<node>, their value a JSON object of string \
        to string (the info), as written by the etcd-registry libraries and \
        go.lumeweb.com/etcd-registry.",
    after_help = "Run `etcd-registry --help` for the output formats, exit status and environment.",
    after_long_help = AFTER_HELP,
    propagate_version = true
)]
struct Cli {
    #[command(flatten)]
    conn: ConnArgs,

    /// Print one JSON object per line instead of text.
    #[arg(long, global = true, help_heading = "Output")]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Connection")]
struct ConnArgs {
    /// etcd endpoints, comma-separated: host:port, http://host:port or https://host:port (TLS).
    #[arg(
        long,
        env = "ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379",
        global = true
    )]
    endpoints: Vec<String>,

    /// Prefix of every key.
    #[arg(
        long,
        env = "ETCD_REGISTRY_BASE_PATH",
        default_value = "/services",
        global = true
    )]
    base_path: String,

    /// User name, for an etcd with authentication enabled.
    #[arg(long, env = "ETCD_USERNAME", global = true)]
    user: Option<String>,

    /// Password of --user. Prefer ETCD_PASSWORD or --password-file: arguments are visible to
    /// other users.
    #[arg(long, env = "ETCD_PASSWORD", hide_env_values = true, global = true)]
    password: Option<String>,

    /// Read the password from this file (one trailing newline is ignored); wins over --password,
    /// unless --password is on the command line and this comes from ETCD_PASSWORD_FILE.
    #[arg(long, env = "ETCD_PASSWORD_FILE", value_name = "FILE", global = true)]
    password_file: Option<PathBuf>,

    /// --password was given on the command line and --password-file was not (it came from
    /// ETCD_PASSWORD_FILE, or not at all): the password wins over the file. Set by [`cli_of`].
    #[arg(skip)]
    password_before_file: bool,

    /// TLS: PEM file of the certificate authority that signed etcd's certificate.
    #[arg(long, env = "ETCD_CACERT", value_name = "FILE", global = true)]
    cacert: Option<PathBuf>,

    /// TLS: PEM file of the client certificate, for mutual TLS.
    #[arg(long, env = "ETCD_CERT", value_name = "FILE", global = true)]
    cert: Option<PathBuf>,

    /// TLS: PEM file of the client key, for mutual TLS.
    #[arg(long, env = "ETCD_KEY", value_name = "FILE", global = true)]
    key: Option<PathBuf>,

    /// TLS: the name to verify etcd's certificate against, for endpoints given by IP.
    #[arg(long, env = "ETCD_TLS_SERVER_NAME", value_name = "NAME", global = true)]
    tls_server_name: Option<String>,

    /// Timeout of connecting and of each etcd call (e.g. 5s, 500ms, 1m).
    #[arg(
        long,
        env = "ETCD_REGISTRY_TIMEOUT",
        default_value = "5s",
        value_name = "DURATION",
        value_parser = parse_duration,
        global = true
    )]
    timeout: Duration,

    /// First retry delay of `register` and `watch` after a failure; doubles up to
    /// --backoff-max.
    #[arg(
        long,
        env = "ETCD_REGISTRY_BACKOFF_MIN",
        default_value = "1s",
        value_name = "DURATION",
        value_parser = parse_duration,
        global = true
    )]
    backoff_min: Duration,

    /// Longest retry delay.
    #[arg(
        long,
        env = "ETCD_REGISTRY_BACKOFF_MAX",
        default_value = "30s",
        value_name = "DURATION",
        value_parser = parse_duration,
        global = true
    )]
    backoff_max: Duration,

    /// Log level of the library on stderr: off, error, warn, info, debug, trace (or a
    /// tracing filter such as etcd_registry=debug). Never waits for stderr: while nobody
    /// reads it, lines beyond 1024 held are dropped, and counted at the end.
    #[arg(
        long,
        env = "ETCD_REGISTRY_LOG",
        default_value = "error",
        value_name = "LEVEL",
        help_heading = "Output",
        global = true
    )]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the nodes of a service, one per line: NAME KEY=VALUE…
    ///
    /// One range request. A service without nodes prints nothing and exits 0.
    List {
        /// The service.
        service: String,
    },
    /// Print the nodes of a service, then every change, one line per event, until interrupted
    ///
    /// Lines:
    ///   added NAME KEY=VALUE…     a node present at the start, or a new one
    ///   updated NAME KEY=VALUE…   a node's info changed
    ///   removed NAME              a node unregistered, or its lease expired
    ///   resynced                  etcd compacted history the watch missed while
    ///                             disconnected (or its history is not the one followed:
    ///                             data lost or restored); it re-listed and printed the
    ///                             difference
    /// Disconnections are resumed without losing or repeating events. While etcd cannot be
    /// reached nothing is printed (the set printed may be stale): --log warn shows the retries.
    /// Read slowly, the lines still always bring the output to the current node set: every
    /// change is printed until 1024 are waiting (a service of more nodes at the start, a large
    /// batch of deletes, stdout read slowly); from then until the output catches up, a node's
    /// new change is merged into its unprinted one, so its intermediate states are skipped (a
    /// node added and removed unprinted is printed `removed` only; an `updated` line may repeat
    /// the info printed last, when the node changed back or was removed and added again).
    /// Exits 0 on SIGINT (Ctrl-C), SIGTERM or SIGHUP, also while stdout is not read (after
    /// waiting up to 5 s for the last lines, then saying on stderr that they were not written),
    /// and once the reader of stdout goes away (`watch api | head -1`), even if no event comes
    /// to be written.
    #[command(verbatim_doc_comment)]
    Watch {
        /// The service.
        service: String,
    },
    /// Register a node and keep it registered until interrupted, printing status events
    ///
    /// Puts <base-path>/<service>/<node>, its info as a JSON object, on a lease of --ttl kept
    /// alive. Whatever happens to etcd or the network (restarts, partitions, an expired lease),
    /// the node is registered again, retrying with backoff without giving up.
    ///
    /// Lines:
    ///   registered KEY lease=ID ttl=Ns          ID in hex, as etcdctl prints and takes it
    ///   failed: ERROR                           the first attempt failed; retries follow
    ///   keep-alive lost: ERROR
    ///   retrying in DELAY (attempt N): ERROR
    ///   re-registered KEY lease=ID
    ///   unregistered KEY                        the last line, once etcd confirmed the delete
    /// Lines never wait for stdout: while nobody reads it (a full pipe, a terminal paused by
    /// Ctrl-S) the node stays registered and signals work; lines that do not fit the 1024 held
    /// are dropped, and counted on stderr at the end.
    /// On SIGINT (Ctrl-C), SIGTERM or SIGHUP (the terminal went away) the key is deleted and
    /// the program exits 0 (a SIGHUP or SIGINT ignored at start, as under `nohup`, stays
    /// ignored). While etcd is slow to confirm the delete, a second signal exits 3 at once;
    /// the key then goes when its lease expires.
    /// If etcd rejects the credentials or the permission, on the first attempt or any later
    /// write (a re-registration after the user was deleted, its password or role changed;
    /// keep-alives do not check them), it deletes the key if it still can and exits 4 at once.
    /// If the TLS handshake fails (a certificate not trusted, expired, refused) before the node
    /// was first registered, it exits 5 at once; once registered, a failed handshake (etcd
    /// gone from behind a load balancer, a member shutting down, certificates being replaced)
    /// is retried like any other outage, with the certificate files read again each time.
    #[command(verbatim_doc_comment)]
    Register {
        /// The service.
        service: String,
        /// The node's name, unique within the service.
        node: String,
        /// The node's info, e.g. address=10.0.0.5:8080 version=1.2.
        #[arg(value_name = "KEY=VALUE", value_parser = parse_pair)]
        info: Vec<(String, String)>,
        /// Lease TTL (rounded up to whole seconds; etcd raises it to its minimum of about 2 s).
        #[arg(long, default_value = "30s", value_name = "DURATION", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Print the names of the services under the base path that have nodes, one per line.
    ///
    /// One range request for keys only. Names are as they appear in keys: a '/' given at
    /// registration reads as '-'.
    Services,
}

/// A failure to report: the exit status and the message for stderr.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// An error of the library, with the endpoints named when etcd could not be reached.
    fn from_error(err: &Error, endpoints: &[String]) -> Self {
        let code = exit_code(err.kind());
        let mut message = err.to_string();
        if code == EXIT_UNREACHABLE {
            message.push_str(&format!(" (endpoints: {})", endpoints.join(",")));
        }
        Failure::new(code, message)
    }
}

fn exit_code(kind: ErrorKind) -> u8 {
    match kind {
        ErrorKind::InvalidArgument => EXIT_USAGE,
        ErrorKind::Connection | ErrorKind::Timeout => EXIT_UNREACHABLE,
        ErrorKind::Auth => EXIT_AUTH,
        ErrorKind::Tls => EXIT_TLS,
        _ => EXIT_ERROR,
    }
}

fn main() -> ExitCode {
    unset_empty_variables(&Cli::command());
    let cli = cli_of(&Cli::command().get_matches()).unwrap_or_else(|e| e.exit());
    init_logs(&cli.conn.log);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            to_stderr(format_args!("etcd-registry: cannot start the runtime: {e}"));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => EXIT_OK,
        Err(failure) => {
            to_stderr(format_args!("etcd-registry: {}", failure.message));
            failure.code
        }
    };
    // Not a plain drop, which waits without a bound for the runtime's blocking threads: a
    // host name lookup with a silent DNS server, or a certificate file on a hung mount, being
    // read for a new connection, would hold the exit (and `--timeout`, and a second signal).
    runtime.shutdown_timeout(EXIT_GRACE);
    finish_stderr(OUTPUT_DRAIN);
    ExitCode::from(code)
}

/// Removes from the environment every variable of an option that is set to the empty string,
/// so that it counts as unset, as in most tools: `ETCD_CACERT=` is no CA file rather than a
/// usage error, `ETCD_ENDPOINTS=` the default endpoint rather than a malformed one. (clap hands
/// an empty variable's value to the option.) Called first thing in `main`, while the program
/// has no other thread that could read the environment meanwhile.
fn unset_empty_variables(command: &clap::Command) {
    for name in empty_variables(command, &|name| std::env::var_os(name)) {
        std::env::remove_var(name);
    }
}

/// The variables of `command`'s options (its subcommands' too) that `lookup` finds set to the
/// empty string.
fn empty_variables(
    command: &clap::Command,
    lookup: &dyn Fn(&OsStr) -> Option<OsString>,
) -> Vec<OsString> {
    let mut empty: Vec<OsString> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .filter(|name| lookup(name).is_some_and(|value| value.is_empty()))
        .map(OsStr::to_os_string)
        .collect();
    for subcommand in command.get_subcommands() {
        empty.extend(empty_variables(subcommand, lookup));
    }
    empty
}

/// The parsed command line, with where the password options came from: one given on the
/// command line wins over one from the environment.
fn cli_of(matches: &ArgMatches) -> Result<Cli, clap::Error> {
    let mut cli = Cli::from_arg_matches(matches)?;
    // Global options: clap keeps their final value and its source in the top-level matches,
    // wherever they were given (before or after the subcommand).
    let on_command_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    cli.conn.password_before_file =
        on_command_line("password") && !on_command_line("password_file");
    Ok(cli)
}

fn init_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| StderrRecord)
        .try_init();
}

/// Lines a [`StderrThread`] holds before it drops new ones.
const STDERR_QUEUE: usize = 1024;

/// Everything the program writes on stderr once it runs (its messages and the library's log
/// records), written by a thread of its own: a stderr nobody reads (a full pipe, `2>&1 | less`
/// left on a page) never blocks the runtime's one thread, which keeps the lease alive and
/// handles signals. Lines beyond [`STDERR_QUEUE`] waiting are dropped, and counted at the end.
struct StderrThread {
    lines: std::sync::mpsc::Sender<ToStderr>,
    queued: std::sync::Arc<AtomicUsize>,
    dropped: AtomicU64,
}

enum ToStderr {
    Line(Vec<u8>),
    /// Answered once every line before it is written (or failed).
    Flush(std::sync::mpsc::Sender<()>),
}

/// The stderr thread; `None` when it cannot start (lines are then written directly).
fn stderr_thread() -> Option<&'static StderrThread> {
    static STDERR: std::sync::OnceLock<Option<StderrThread>> = std::sync::OnceLock::new();
    STDERR.get_or_init(StderrThread::start).as_ref()
}

impl StderrThread {
    fn start() -> Option<StderrThread> {
        let (lines, received) = std::sync::mpsc::channel::<ToStderr>();
        let queued = std::sync::Arc::new(AtomicUsize::new(0));
        let written = queued.clone();
        std::thread::Builder::new()
            .name("stderr".into())
            .spawn(move || {
                let mut stderr = io::stderr();
                for message in received {
                    match message {
                        ToStderr::Line(line) => {
                            // A stderr that fails (a terminal hung up: EIO) loses the line.
                            let _ = stderr.write_all(&line);
                            written.fetch_sub(1, Ordering::SeqCst);
                        }
                        ToStderr::Flush(done) => {
                            let _ = done.send(());
                        }
                    }
                }
            })
            .ok()?;
        Some(StderrThread {
            lines,
            queued,
            dropped: AtomicU64::new(0),
        })
    }

    fn write(&self, line: &[u8]) {
        if self.queued.fetch_add(1, Ordering::SeqCst) >= STDERR_QUEUE {
            self.queued.fetch_sub(1, Ordering::SeqCst);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.lines.send(ToStderr::Line(line.to_vec())).is_err() {
            self.queued.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Waits up to `within` for the lines queued so far to be written; false if they were not.
    fn flush(&self, within: Duration) -> bool {
        let (done, flushed) = std::sync::mpsc::channel();
        self.lines.send(ToStderr::Flush(done)).is_ok() && flushed.recv_timeout(within).is_ok()
    }
}

/// The writer of one log record: tracing's formatter writes a whole record at once.
struct StderrRecord;

impl io::Write for StderrRecord {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match stderr_thread() {
            Some(thread) => thread.write(buf),
            None => {
                let _ = io::stderr().write_all(buf);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// At the end: waits up to `within` for the lines on their way to stderr (the last ones say
/// why the program ends), and says how many were dropped while stderr was not read.
fn finish_stderr(within: Duration) {
    let Some(thread) = stderr_thread() else {
        return;
    };
    let dropped = thread.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        thread.write(
            format!("etcd-registry: stderr was not read: {dropped} line(s) dropped\n").as_bytes(),
        );
    }
    thread.flush(within);
}

/// The library's configuration from the flags and environment.
fn config_of(args: &ConnArgs) -> Result<Config, Failure> {
    let mut config = Config::new(args.endpoints.iter().cloned(), args.base_path.clone())
        .with_timeout(args.timeout)
        .with_backoff(args.backoff_min, args.backoff_max);
    // --password-file wins over --password, unless only --password is on the command line.
    let password = match &args.password_file {
        Some(path) if !args.password_before_file => Some(read_password(path)?),
        _ => args.password.clone(),
    };
    config.username = args.user.clone();
    config.password = password;
    // Any of them turns TLS on (so does an https:// endpoint, with the system roots).
    config.tls.ca = args.cacert.clone().map(PemSource::File);
    config.tls.cert = args.cert.clone().map(PemSource::File);
    config.tls.key = args.key.clone().map(PemSource::File);
    config.tls.server_name = args.tls_server_name.clone();
    Ok(config)
}

fn read_password(path: &Path) -> Result<String, Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::new(
            EXIT_USAGE,
            format!("cannot read the password file {}: {e}", path.display()),
        )
    })?;
    let text = text.strip_suffix('\n').unwrap_or(&text);
    Ok(text.strip_suffix('\r').unwrap_or(text).to_string())
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let config = config_of(&cli.conn)?;
    let endpoints = config.endpoints.clone();
    let fail = |e: Error| Failure::from_error(&e, &endpoints);
    let registry = Registry::connect(config).await.map_err(fail)?;
    let mut out = Output::new(cli.json);
    let result = match cli.command {
        Command::List { service } => list(&registry, &service, &mut out).await,
        Command::Services => services(&registry, &mut out).await,
        Command::Watch { service } => watch(&registry, &service, &mut out).await,
        Command::Register {
            service,
            node,
            info,
            ttl,
        } => register(&registry, &service, &node, info, ttl, &mut out).await,
    };
    if let Err(Step::Abandoned(f)) = result {
        return Err(f);
    }
    let closed = registry.close().await;
    match result {
        Ok(()) | Err(Step::OutputClosed) => closed.map_err(fail),
        Err(Step::Etcd(e)) => Err(fail(e)),
        Err(Step::Fail(f) | Step::Abandoned(f)) => Err(f),
        Err(Step::Output(e)) => Err(Failure::new(
            EXIT_ERROR,
            format!("cannot write to stdout: {e}"),
        )),
    }
}

/// How a command ended early.
enum Step {
    /// An error of the library.
    Etcd(Error),
    /// Anything else, already with its exit status.
    Fail(Failure),
    /// Stopped by a second signal before the end of its cleanup: the registry is not closed
    /// either (its revoke would wait as long as the delete did).
    Abandoned(Failure),
    /// Whoever read stdout went away (`| head -1`): a normal end.
    OutputClosed,
    /// Writing to stdout failed otherwise.
    Output(io::Error),
}

impl From<Error> for Step {
    fn from(err: Error) -> Self {
        Step::Etcd(err)
    }
}

impl From<io::Error> for Step {
    fn from(err: io::Error) -> Self {
        if err.kind() == io::ErrorKind::BrokenPipe {
            Step::OutputClosed
        } else {
            Step::Output(err)
        }
    }
}

async fn list(registry: &Registry, service: &str, out: &mut Output) -> Result<(), Step> {
    for node in registry.list(service).await? {
        out.line(obj!("name": node.name, "info": node.info), || {
            format!("{}{}", quote(&node.name), info_text(&node.info))
        })?;
    }
    Ok(())
}

async fn services(registry: &Registry, out: &mut Output) -> Result<(), Step> {
    for name in registry.services().await? {
        out.line(obj!("service": name), || quote(&name))?;
    }
    Ok(())
}

async fn watch(registry: &Registry, service: &str, out: &mut Output) -> Result<(), Step> {
    let mut stop = Interrupt::new()?;
    let mut gone = OutputGone::new();
    let watch = tokio::select! {
        watch = registry.watch(service) => watch?,
        _ = stop.recv() => return Ok(()),
        _ = gone.recv() => return Err(Step::OutputClosed),
    };
    // A reader that does not read (a stalled pipe, a terminal paused by Ctrl-S) holds the
    // watch back, the library merging its events meanwhile, but not the signals: lines are
    // written by a thread of their own, which this one waits for.
    let mut paced = Paced::start();
    let result = async {
        loop {
            let line = tokio::select! {
                event = watch.next() => match event {
                    Some(event) => watch_line(&event, out),
                    None => return Ok(()),
                },
                _ = stop.recv() => return Ok(()),
                // `watch api | head -1` on a quiet service: head has exited, and no event may
                // come for a long time to fail a write with EPIPE.
                _ = gone.recv() => return Err(Step::OutputClosed),
            };
            let Some(paced) = &mut paced else {
                out.write(line)?;
                continue;
            };
            tokio::select! {
                written = paced.send(line) => written?,
                _ = stop.recv() => return Ok(()),
                _ = gone.recv() => return Err(Step::OutputClosed),
            }
        }
    }
    .await;
    if let Some(paced) = paced {
        paced.finish(OUTPUT_DRAIN);
    }
    result
}

/// Stdout closed by its reader (the read end of a pipe closed, a terminal hung up), noticed
/// without writing: a thread of its own waits in poll(2) for POLLERR or POLLHUP on it.
struct OutputGone {
    received: Option<tokio::sync::oneshot::Receiver<()>>,
    closed: bool,
}

impl OutputGone {
    fn new() -> Self {
        let (sender, received) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("stdout-watch".into())
            .spawn(move || loop {
                // No event asked for: only POLLERR, POLLHUP and POLLNVAL are reported. A regular
                // file or /dev/null never reports them, and the thread waits forever.
                let mut fd = libc::pollfd {
                    fd: libc::STDOUT_FILENO,
                    events: 0,
                    revents: 0,
                };
                // SAFETY: poll on one pollfd that lives on this stack.
                let n = unsafe { libc::poll(&mut fd, 1, -1) };
                if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if n > 0 && fd.revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                    let _ = sender.send(());
                }
                // Anything else (POLLNVAL, a failing poll): never report, like a file.
                return;
            });
        OutputGone {
            received: spawned.ok().map(|_| received),
            closed: false,
        }
    }

    async fn recv(&mut self) {
        if let Some(received) = self.received.as_mut() {
            let closed = received.await.is_ok();
            // A finished receiver must not be polled again.
            self.received = None;
            if closed {
                self.closed = true;
            }
        }
        if !self.closed {
            // The thread could not start, or saw nothing it reports: never.
            std::future::pending::<()>().await
        }
    }
}

fn watch_line(event: &WatchEvent, out: &Output) -> String {
    let kind = event.kind.as_str();
    match &event.node {
        Some(node) => out.render(
            obj!("event": kind, "name": node.name, "info": node.info, "revision": event.revision),
            || match event.kind {
                WatchEventKind::Removed => format!("{kind} {}", quote(&node.name)),
                _ => format!("{kind} {}{}", quote(&node.name), info_text(&node.info)),
            },
        ),
        None => out.render(obj!("event": kind, "revision": event.revision), || {
            kind.to_string()
        }),
    }
}

async fn register(
    registry: &Registry,
    service: &str,
    node: &str,
    pairs: Vec<(String, String)>,
    ttl: Duration,
    out: &mut Output,
) -> Result<(), Step> {
    let mut stop = Interrupt::new()?;
    let mut info = Info::new();
    for (key, value) in pairs {
        if info.insert(key.clone(), value).is_some() {
            return Err(Step::Fail(Failure::new(
                EXIT_USAGE,
                format!("info key {key:?} is given twice"),
            )));
        }
    }
    let registration = registry.register(service, Node::new(node, info), ttl)?;
    // A stdout nobody reads (a stalled pipe, a terminal paused by Ctrl-S) must not stop the
    // keep-alives and the signal handling that run on this thread: lines go through a thread
    // of their own, and are dropped when it falls behind.
    out.detach();
    let key = registration.key().to_string();
    let mut events = registration.subscribe();
    // The registration is the point: a reader that went away does not end it.
    let mut print = |event: &StatusEvent| {
        let _ = print_status_event(event, &key, registration.ttl_secs(), out);
    };
    let mut refused = None;
    // Whether the node was ever registered: from then on a failed TLS handshake is retried.
    let mut registered = false;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    // Rejected credentials (or permission) do not come back by retrying with the
                    // same ones, whether on the first attempt or later (the user deleted, its
                    // password or role changed): exit 4 and let the operator or a supervisor
                    // restart with good ones (a --password-file is read again then). Nor does a
                    // TLS handshake that fails before the node was first registered: a
                    // misconfiguration (exit 5: the certificate files are read again then).
                    // The retry the library announces is not made, so it is printed as the
                    // failure it is. Once registered, a failed handshake is often transient (a
                    // TCP load balancer that accepts and closes while no etcd is behind it, a
                    // member shutting down), and the library reads the certificate files again
                    // for every new connection: it is printed as announced, and retried.
                    if let StatusEvent::Registered { .. } = event {
                        registered = true;
                    }
                    let error = match &event {
                        StatusEvent::Failed { error }
                        | StatusEvent::KeepAliveLost { error }
                        | StatusEvent::Retrying { error, .. } => Some(error),
                        _ => None,
                    };
                    let fatal = |e: &&Error| match e.kind() {
                        ErrorKind::Auth => true,
                        ErrorKind::Tls => !registered,
                        _ => false,
                    };
                    match error.filter(fatal) {
                        Some(error) => {
                            let error = error.clone();
                            if let StatusEvent::Retrying { .. } = event {
                                print(&StatusEvent::Failed { error: error.clone() });
                            } else {
                                print(&event);
                            }
                            refused = Some(error);
                            break;
                        }
                        None => print(&event),
                    }
                }
                None => break,
            },
            _ = stop.recv() => break,
        }
    }
    // try_: this tool reports a key it could not delete (exit code 3), which unregister() only logs.
    // A second SIGINT or SIGTERM cuts short a delete that waits for a slow or silent etcd (up
    // to --timeout, and as long again for the revoke at close): the key then goes with its
    // lease. Signals that came with the first one, and any SIGHUP, do not.
    stop.forget_received();
    let unregistered = tokio::select! {
        result = registration.try_unregister() => result,
        _ = stop.recv_again() => {
            out.finish(OUTPUT_DRAIN);
            return Err(Step::Abandoned(Failure::new(
                EXIT_UNREACHABLE,
                format!(
                    "interrupted again before etcd confirmed the key's deletion; if it is still \
                     there, it disappears when its lease expires, within {} s",
                    registration.ttl_secs()
                ),
            )));
        }
    };
    // The rest of the events, down to `unregistered` (the stream ends after it), but for a
    // retry announced after rejected credentials or a handshake that failed before the first
    // registration: it is not made. Nor is `unregistered` printed when etcd did not confirm the
    // delete: the key may still be there, and the error says so on stderr.
    while let Some(event) = events.recv().await {
        let unmade = refused.is_some() && matches!(event, StatusEvent::Retrying { .. });
        let unconfirmed = unregistered.is_err() && matches!(event, StatusEvent::Unregistered);
        if !unmade && !unconfirmed {
            print(&event);
        }
    }
    out.finish(OUTPUT_DRAIN);
    if let Some(error) = refused {
        return Err(Step::Etcd(error));
    }
    unregistered.map_err(|e| {
        Step::Etcd(Error::new(
            e.kind(),
            format!(
                "{}; the key disappears when its lease expires, within {} s",
                e.message(),
                registration.ttl_secs()
            ),
        ))
    })
}

fn print_status_event(
    event: &StatusEvent,
    key: &str,
    ttl_secs: i64,
    out: &mut Output,
) -> io::Result<()> {
    let kind = event.kind_str();
    match event {
        StatusEvent::Registered { lease_id } => out.line(
            obj!(
                "event": kind,
                "key": key,
                "lease_id": lease_id,
                "lease_id_hex": lease_hex(*lease_id),
                "ttl": ttl_secs,
            ),
            || format!("registered {key} lease={} ttl={ttl_secs}s", lease_hex(*lease_id)),
        ),
        StatusEvent::Failed { error } => out.line(
            obj!("event": kind, "error": error.to_string(), "error_kind": error.kind().as_str()),
            || format!("failed: {error}"),
        ),
        StatusEvent::KeepAliveLost { error } => out.line(
            obj!("event": kind, "error": error.to_string(), "error_kind": error.kind().as_str()),
            || format!("keep-alive lost: {error}"),
        ),
        StatusEvent::Retrying {
            attempt,
            delay,
            error,
        } => out.line(
            obj!(
                "event": kind,
                "attempt": attempt,
                "delay_ms": delay.as_millis() as u64,
                "error": error.to_string(),
                "error_kind": error.kind().as_str(),
            ),
            || {
                format!(
                    "retrying in {:.1}s (attempt {attempt}): {error}",
                    delay.as_secs_f64()
                )
            },
        ),
        StatusEvent::Reregistered { lease_id } => out.line(
            obj!("event": kind, "key": key, "lease_id": lease_id, "lease_id_hex": lease_hex(*lease_id)),
            || format!("re-registered {key} lease={}", lease_hex(*lease_id)),
        ),
        StatusEvent::Updated { lease_id } => out.line(
            obj!("event": kind, "key": key, "lease_id": lease_id, "lease_id_hex": lease_hex(*lease_id)),
            || format!("updated {key} lease={}", lease_hex(*lease_id)),
        ),
        StatusEvent::Unregistered => out.line(obj!("event": kind, "key": key), || {
            format!("unregistered {key}")
        }),
    }
}

/// A lease id as etcdctl prints it (`lease list`, `--lease=`): 16 lower-case hex digits. The
/// decimal `lease_id` of `--json` exceeds 2^53, which jq and JavaScript round; this string is
/// exact.
fn lease_hex(lease_id: i64) -> String {
    format!("{lease_id:016x}")
}

/// SIGINT, SIGTERM or SIGHUP; installed before anything that can wait, so none kills the
/// program before it has cleaned up.
///
/// The handler writes a byte to a pipe that a thread of its own reads, as tokio's signal
/// support does inside; without that support, the library and its dependencies build the same
/// for every program of the workspace (tokio's `signal` feature here alone would build them
/// twice).
struct Interrupt {
    /// The signals received, by number.
    received: tokio::sync::mpsc::UnboundedReceiver<libc::c_int>,
}

/// The write end of the pipe of [`Interrupt`], for the handler; -1 until it is installed.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(signal: libc::c_int) {
    // Async-signal-safe: write(2) only, and errno as the interrupted code left it.
    // SAFETY: errno is this thread's; the byte written (the signal's number, below 64) is a
    // local.
    unsafe {
        let errno = *libc::__errno_location();
        let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
        if fd >= 0 {
            libc::write(fd, [signal as u8].as_ptr().cast(), 1);
        }
        *libc::__errno_location() = errno;
    }
}

impl Interrupt {
    fn new() -> Result<Self, Step> {
        let fail = |what: &str| {
            let error = io::Error::last_os_error();
            Step::Fail(Failure::new(
                EXIT_ERROR,
                format!("cannot handle signals: {what}: {error}"),
            ))
        };
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes the two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(fail("pipe"));
        }
        let [read, write] = fds;
        // The handler must never block: a full pipe already says what it would.
        // SAFETY: fcntl on the descriptor just made.
        if unsafe { libc::fcntl(write, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
            return Err(fail("pipe"));
        }
        let (sender, received) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || loop {
                let mut byte = 0u8;
                // SAFETY: reads one byte into `byte`.
                let n = unsafe { libc::read(read, (&mut byte as *mut u8).cast(), 1) };
                if n == 1 {
                    if sender.send(libc::c_int::from(byte)).is_err() {
                        return;
                    }
                } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted
                {
                    return;
                }
            })
            .map_err(|e| {
                Step::Fail(Failure::new(
                    EXIT_ERROR,
                    format!("cannot handle signals: {e}"),
                ))
            })?;
        SIGNAL_PIPE.store(write, Ordering::Relaxed);
        // SIGHUP too: the terminal of a `register` in an ssh session went away; the node must
        // not stay registered until its TTL runs out.
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // A SIGHUP or SIGINT ignored by whoever started the program stays ignored, as the
            // shells and `nohup` mean it: `nohup etcd-registry register ... &` survives the
            // hangup of its session, and a background job of a script, Ctrl-C at its terminal.
            if signal != libc::SIGTERM {
                // SAFETY: sigaction with a null new action only reads the current one into a
                // zeroed struct.
                let ignored = unsafe {
                    let mut current: libc::sigaction = std::mem::zeroed();
                    libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                        && current.sa_sigaction == libc::SIG_IGN
                };
                if ignored {
                    continue;
                }
            }
            // SAFETY: a zeroed sigaction is valid; it gets the handler, an empty mask and
            // SA_RESTART (system calls it interrupts resume).
            let installed = unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
                action.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut action.sa_mask);
                libc::sigaction(signal, &action, std::ptr::null_mut())
            };
            if installed != 0 {
                return Err(fail("sigaction"));
            }
        }
        Ok(Interrupt { received })
    }

    /// The next signal's number.
    async fn recv(&mut self) -> libc::c_int {
        match self.received.recv().await {
            Some(signal) => signal,
            // The reading thread is gone (it never stops on its own): no signal comes.
            None => std::future::pending().await,
        }
    }

    /// Forgets the signals already received: they came with the one being acted on (a hangup
    /// sends SIGHUP twice: the shell passes it on to its jobs, and the kernel sends it to the
    /// terminal's foreground group).
    fn forget_received(&mut self) {
        while self.received.try_recv().is_ok() {}
    }

    /// The next signal that asks again to stop at once: SIGINT or SIGTERM (a second Ctrl-C, a
    /// supervisor losing patience). A SIGHUP never does: a hangup may repeat.
    async fn recv_again(&mut self) {
        while self.recv().await == libc::SIGHUP {}
    }
}

/// Writes a line on stderr, through its thread (see [`StderrThread`]), never waiting for a
/// reader; a stderr that fails (a terminal hung up: EIO) loses it, without a panic as
/// `eprintln!` would.
fn to_stderr(line: std::fmt::Arguments<'_>) {
    let line = format!("{line}\n");
    match stderr_thread() {
        Some(thread) => thread.write(line.as_bytes()),
        None => {
            let _ = io::stderr().write_all(line.as_bytes());
        }
    }
}

/// Lines on stdout, flushed one by one (a reader of `watch` sees each event at once).
struct Output {
    json: bool,
    sink: Sink,
}

/// How long the exit waits for the runtime's blocking threads (a host name lookup, a
/// certificate file read) to finish.
const EXIT_GRACE: Duration = Duration::from_millis(100);

/// How long `register` and `watch`, at their end, wait for their last lines to reach a slow
/// stdout.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// Lines a detached [`Output`] holds for its thread before it drops them.
const OUTPUT_QUEUE: usize = 1024;
/// Lines a paced [`Output`] holds for its thread before the caller waits.
const PACED_QUEUE: usize = 64;

enum Sink {
    /// Written on the caller's thread: `list`, `services` and `watch` wait for their reader.
    Direct(io::Stdout),
    /// Written by a thread of its own, fed without waiting (`register`).
    Thread {
        lines: std::sync::mpsc::SyncSender<String>,
        /// Lines dropped because the queue was full.
        dropped: u64,
        /// Ends (disconnected) when the thread has written, or given up on, every line.
        done: std::sync::mpsc::Receiver<()>,
    },
}

/// Lines written by a thread of its own, which the caller waits for, without blocking its
/// thread, when the thread falls behind (`watch`).
struct Paced {
    lines: tokio::sync::mpsc::Sender<String>,
    /// Why the thread gave up on stdout.
    failed: std::sync::mpsc::Receiver<io::Error>,
    /// Ends (disconnected) when the thread has written, or given up on, every line.
    done: std::sync::mpsc::Receiver<()>,
}

impl Paced {
    /// None when the thread cannot start.
    fn start() -> Option<Paced> {
        let (lines, mut queue) = tokio::sync::mpsc::channel::<String>(PACED_QUEUE);
        let (failed_sender, failed) = std::sync::mpsc::channel::<io::Error>();
        let (done_sender, done) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let _done = done_sender;
                let mut stdout = io::stdout();
                while let Some(line) = queue.blocking_recv() {
                    let written = stdout.write_all(line.as_bytes());
                    if let Err(e) = written.and_then(|()| stdout.flush()) {
                        let _ = failed_sender.send(e);
                        return;
                    }
                }
            })
            .ok()?;
        Some(Paced {
            lines,
            failed,
            done,
        })
    }

    /// Hands `line` (see [`Output::render`]) to the thread, once it has room for it.
    async fn send(&mut self, line: String) -> io::Result<()> {
        match self.lines.send(line).await {
            Ok(()) => Ok(()),
            // The thread gave up on a stdout that fails.
            Err(_) => Err(self
                .failed
                .try_recv()
                .unwrap_or_else(|_| io::ErrorKind::BrokenPipe.into())),
        }
    }

    /// As [`Output::finish`].
    fn finish(self, within: Duration) {
        let Paced { lines, done, .. } = self;
        drop(lines);
        report_unwritten(0, &done, within);
    }
}

/// Waits up to `within` for an output thread to write what it holds (until `done` is
/// disconnected), then says on stderr how many lines were lost to a reader that did not read.
fn report_unwritten(dropped: u64, done: &std::sync::mpsc::Receiver<()>, within: Duration) {
    let written = matches!(
        done.recv_timeout(within),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
    );
    let lost = match (dropped, written) {
        (0, true) => return,
        (0, false) => "the last lines not written".to_string(),
        (_, true) => format!("{dropped} line(s) dropped"),
        (_, false) => format!("{dropped} line(s) dropped, and the last ones not written"),
    };
    to_stderr(format_args!("etcd-registry: stdout was not read: {lost}"));
}

impl Output {
    fn new(json: bool) -> Self {
        Output {
            json,
            sink: Sink::Direct(io::stdout()),
        }
    }

    /// From now on, lines are handed to a writing thread and never block the caller; when
    /// the thread cannot start, they stay written directly.
    fn detach(&mut self) {
        let (lines, queue) = std::sync::mpsc::sync_channel::<String>(OUTPUT_QUEUE);
        let (done_sender, done) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("stdout".into())
            .spawn(move || {
                let _done = done_sender;
                let mut stdout = io::stdout();
                for line in queue {
                    if stdout
                        .write_all(line.as_bytes())
                        .and_then(|()| stdout.flush())
                        .is_err()
                    {
                        // A reader that went away does not end `register`: the rest is
                        // dropped unwritten.
                        return;
                    }
                }
            });
        if spawned.is_ok() {
            self.sink = Sink::Thread {
                lines,
                dropped: 0,
                done,
            };
        }
    }

    /// Waits up to `within` for a detached output's thread to write what it holds, then says
    /// on stderr how many lines were lost to a reader that did not read.
    fn finish(&mut self, within: Duration) {
        let Sink::Thread { dropped, done, .. } =
            std::mem::replace(&mut self.sink, Sink::Direct(io::stdout()))
        else {
            return;
        };
        // The sender is dropped with the replaced sink: the thread ends after the last line.
        report_unwritten(dropped, &done, within);
    }

    fn line(
        &mut self,
        fields: &[(&str, serde_json::Value)],
        text: impl FnOnce() -> String,
    ) -> io::Result<()> {
        let line = self.render(fields, text);
        self.write(line)
    }

    /// A line of output: `fields` as a JSON object with --json, else `text()`.
    fn render(
        &self,
        fields: &[(&str, serde_json::Value)],
        text: impl FnOnce() -> String,
    ) -> String {
        if self.json {
            let fields: Vec<String> = fields
                .iter()
                .map(|(key, value)| format!("{}:{value}", serde_json::Value::from(*key)))
                .collect();
            format!("{{{}}}\n", fields.join(","))
        } else {
            format!("{}\n", text())
        }
    }

    fn write(&mut self, line: String) -> io::Result<()> {
        match &mut self.sink {
            Sink::Direct(stdout) => {
                let mut lock = stdout.lock();
                lock.write_all(line.as_bytes())?;
                lock.flush()
            }
            Sink::Thread { lines, dropped, .. } => match lines.try_send(line) {
                Ok(()) => Ok(()),
                Err(std::sync::mpsc::TrySendError::Full(_)) => {
                    *dropped += 1;
                    Ok(())
                }
                // The thread gave up on a stdout that fails.
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                    Err(io::ErrorKind::BrokenPipe.into())
                }
            },
        }
    }
}

/// ` key=value key=value`, sorted by key; values quoted when they would not read back as one
/// word.
fn info_text(info: &Info) -> String {
    info.iter()
        .map(|(k, v)| format!(" {}={}", quote(k), quote(v)))
        .collect()
}

fn quote(text: &str) -> String {
    let plain = !text.is_empty()
        && !text
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\' | '=' | '\''));
    if plain {
        text.to_string()
    } else {
        format!("{text:?}")
    }
}

/// `30`, `30s`, `1.5s`, `500ms`, `2m`, `1h`: a non-negative duration (seconds by default).
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let not_a_duration = || format!("{text:?} is not a duration (e.g. 30s, 500ms, 2m)");
    if number.is_empty() {
        return Err(not_a_duration());
    }
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m or h (e.g. 30s)"
            ))
        }
    };
    let value: f64 = number.parse().map_err(|_| not_a_duration())?;
    Duration::try_from_secs_f64(value * scale).map_err(|_| format!("{text:?} is out of range"))
}

/// `KEY=VALUE`, split at the first '='; the key must not be empty, the value may.
fn parse_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some(("", _)) => Err(format!("{text:?} has an empty KEY")),
        Some((key, value)) => Ok((key.to_string(), value.to_string())),
        None => Err(format!(
            "{text:?} is not KEY=VALUE (info is given as pairs such as address=10.0.0.5:8080)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let matches = Cli::command()
            .try_get_matches_from(std::iter::once("etcd-registry").chain(args.iter().copied()))?;
        cli_of(&matches)
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn variables_set_empty_are_the_ones_unset() {
        let command = Cli::command();
        let lookup = |name: &OsStr| match name.to_str() {
            Some("ETCD_ENDPOINTS" | "ETCD_CACERT" | "ETCD_PASSWORD") => Some(OsString::new()),
            Some("ETCD_USERNAME") => Some(OsString::from("user")),
            _ => None,
        };
        let mut empty = empty_variables(&command, &lookup);
        empty.sort();
        empty.dedup();
        assert_eq!(empty, ["ETCD_CACERT", "ETCD_ENDPOINTS", "ETCD_PASSWORD"]);
        // Unset, ETCD_ENDPOINTS leaves the endpoints to their default.
        let endpoints = command
            .get_arguments()
            .find(|arg| arg.get_id() == "endpoints")
            .unwrap();
        assert_eq!(endpoints.get_env(), Some(OsStr::new("ETCD_ENDPOINTS")));
        assert_eq!(endpoints.get_default_values(), ["127.0.0.1:2379"]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["", "s", "-1", "1x", "1e400", "abc", "1.2.3"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pairs() {
        assert_eq!(
            parse_pair("address=10.0.0.5:8080").unwrap(),
            ("address".into(), "10.0.0.5:8080".into())
        );
        assert_eq!(parse_pair("a=b=c").unwrap(), ("a".into(), "b=c".into()));
        assert_eq!(parse_pair("empty=").unwrap(), ("empty".into(), "".into()));
        assert!(parse_pair("=x").is_err());
        assert!(parse_pair("novalue").is_err());
    }

    #[test]
    fn flags_fill_the_configuration() {
        let cli = parse(&[
            "--endpoints",
            "a:1,b:2",
            "--base-path",
            "/x",
            "--user",
            "u",
            "--password",
            "p",
            "--cacert",
            "/ca.pem",
            "--cert",
            "/c.pem",
            "--key",
            "/k.pem",
            "--tls-server-name",
            "etcd.test",
            "--timeout",
            "2s",
            "--backoff-min",
            "100ms",
            "--backoff-max",
            "1s",
            "list",
            "api",
        ])
        .unwrap();
        let config = config_of(&cli.conn).unwrap();
        assert_eq!(config.endpoints, ["a:1", "b:2"]);
        assert_eq!(config.base_path, "/x");
        assert_eq!(config.username.as_deref(), Some("u"));
        assert_eq!(config.password.as_deref(), Some("p"));
        assert_eq!(config.tls.ca, Some(PemSource::File("/ca.pem".into())));
        assert_eq!(config.tls.cert, Some(PemSource::File("/c.pem".into())));
        assert_eq!(config.tls.key, Some(PemSource::File("/k.pem".into())));
        assert_eq!(config.tls.server_name.as_deref(), Some("etcd.test"));
        assert_eq!(config.timeout, Duration::from_secs(2));
        assert_eq!(config.backoff_min, Duration::from_millis(100));
        assert_eq!(config.backoff_max, Duration::from_secs(1));
    }

    #[test]
    fn a_password_on_the_command_line_wins_over_a_file_from_the_environment_only() {
        // Only command-line sources here (the environment is the integration tests' part):
        // --password alone, before or after the subcommand, is marked to win over a file that
        // could come from ETCD_PASSWORD_FILE; with both flags, the file wins as documented.
        for args in [
            &["--user", "u", "--password", "p", "list", "api"][..],
            &["list", "api", "--user", "u", "--password", "p"],
        ] {
            let cli = parse(args).unwrap();
            assert!(cli.conn.password_before_file, "{args:?}");
            assert_eq!(config_of(&cli.conn).unwrap().password.as_deref(), Some("p"));
        }
        for args in [
            &[
                "--password",
                "p",
                "--password-file",
                "/nonexistent/pw",
                "list",
                "api",
            ][..],
            &[
                "--password-file",
                "/nonexistent/pw",
                "list",
                "api",
                "--password",
                "p",
            ],
        ] {
            let cli = parse(args).unwrap();
            assert!(!cli.conn.password_before_file, "{args:?}");
            let err = config_of(&cli.conn).unwrap_err();
            assert!(err.message.contains("/nonexistent/pw"), "{args:?}");
        }
        assert!(!parse(&["list", "api"]).unwrap().conn.password_before_file);
    }

    #[test]
    fn global_flags_go_after_the_command_too() {
        let cli = parse(&["list", "api", "--json", "--endpoints", "h:9"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.conn.endpoints, ["h:9"]);
    }

    #[test]
    fn usage_errors_are_clap_errors_with_status_2() {
        for args in [
            &[][..],
            &["list"],
            &["register", "api"],
            &["register", "api", "n1", "noequals"],
            &["register", "api", "n1", "--ttl", "soon"],
            &["bogus"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn error_kinds_map_to_documented_statuses() {
        assert_eq!(exit_code(ErrorKind::InvalidArgument), 2);
        assert_eq!(exit_code(ErrorKind::Connection), 3);
        assert_eq!(exit_code(ErrorKind::Timeout), 3);
        assert_eq!(exit_code(ErrorKind::Auth), 4);
        assert_eq!(exit_code(ErrorKind::Tls), 5);
        assert_eq!(exit_code(ErrorKind::Internal), 1);
        assert_eq!(exit_code(ErrorKind::NotFound), 1);
    }

    #[test]
    fn info_text_quotes_only_what_needs_it() {
        let info: Info = [("a", "1"), ("b", "two words"), ("c", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(info_text(&info), r#" a=1 b="two words" c="""#);
    }
}
