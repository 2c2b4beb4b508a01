// Package mlog is podid's stand-in for monis.app/mlog v0.0.4, a logging library the Azure
// Workload ID webhook and azwi import but that the Go module proxy does not serve here. It
// implements only what those two programs call — levels, the package-level logger, Logger with
// WithName/WithValues, Setup, Fatal, Logr for controller-runtime — on go-logr's funcr, printing
// JSON (FormatJSON, the webhook) or plain key=value lines (FormatCLI, azwi) to stderr. Test
// infrastructure only: the webhook's and azwi's own code runs unchanged on top of it.
package mlog

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
)

// LogLevel is one of the levels below; "" means the default (warnings and errors only).
type LogLevel string

// LogFormat selects the output encoding.
type LogFormat string

const (
	LevelWarning LogLevel = "warning"
	LevelInfo    LogLevel = "info"
	LevelDebug   LogLevel = "debug"
	LevelTrace   LogLevel = "trace"
	LevelAll     LogLevel = "all"

	FormatJSON LogFormat = "json"
	FormatCLI  LogFormat = "cli"
)

// LogSpec is what ValidateAndSetLogLevelAndFormatGlobally applies.
type LogSpec struct {
	Level  LogLevel  `json:"level,omitempty"`
	Format LogFormat `json:"format,omitempty"`
}

// logr verbosity of each level: a message is printed when its verbosity <= the global one.
const (
	vWarning = 0
	vInfo    = 2
	vDebug   = 4
	vTrace   = 6
	vAll     = 108
)

func verbosityOf(l LogLevel) (int32, bool) {
	switch l {
	case "", LevelWarning:
		return vWarning, true
	case LevelInfo:
		return vInfo, true
	case LevelDebug:
		return vDebug, true
	case LevelTrace:
		return vTrace, true
	case LevelAll:
		return vAll, true
	}
	return 0, false
}

var (
	globalVerbosity atomic.Int32
	globalJSON      atomic.Bool
)

func init() { globalJSON.Store(true) }

// ValidateAndSetLogLevelAndFormatGlobally checks spec and applies it to every logger.
func ValidateAndSetLogLevelAndFormatGlobally(_ context.Context, spec LogSpec) error {
	v, ok := verbosityOf(spec.Level)
	if !ok {
		return fmt.Errorf("invalid log level %q: want one of \"\", %q, %q, %q, %q, %q",
			spec.Level, LevelWarning, LevelInfo, LevelDebug, LevelTrace, LevelAll)
	}
	switch spec.Format {
	case "", FormatJSON:
		globalJSON.Store(true)
	case FormatCLI:
		globalJSON.Store(false)
	default:
		return fmt.Errorf("invalid log format %q: want %q or %q", spec.Format, FormatJSON, FormatCLI)
	}
	globalVerbosity.Store(v)
	return nil
}

// Enabled says whether messages at level are printed.
func Enabled(level LogLevel) bool {
	v, ok := verbosityOf(level)
	return ok && v <= globalVerbosity.Load()
}

// Setup returns the flush function to defer; output is unbuffered, so it does nothing.
func Setup() func() { return func() {} }

// Fatal prints err and exits with status 1.
func Fatal(err error, keysAndValues ...any) {
	New().Error("fatal", err, keysAndValues...)
	os.Exit(1)
}

// sink wraps funcr so that the level and format are read at each call, not at creation.
type sink struct {
	name   string
	values []any
	depth  int
}

func (s sink) target() logr.LogSink {
	write := func(prefix, args string) {
		if prefix != "" {
			fmt.Fprintf(os.Stderr, "%s: %s\n", prefix, args)
		} else {
			fmt.Fprintln(os.Stderr, args)
		}
	}
	opts := funcr.Options{LogTimestamp: true, Verbosity: vAll}
	var l logr.Logger
	if globalJSON.Load() {
		l = funcr.NewJSON(func(obj string) { fmt.Fprintln(os.Stderr, obj) }, opts)
	} else {
		l = funcr.New(write, opts)
	}
	if s.name != "" {
		l = l.WithName(s.name)
	}
	if len(s.values) > 0 {
		l = l.WithValues(s.values...)
	}
	return l.GetSink()
}

func (s sink) Init(logr.RuntimeInfo) {}

func (s sink) Enabled(level int) bool { return int32(level) <= globalVerbosity.Load() }

func (s sink) Info(level int, msg string, keysAndValues ...any) {
	s.target().Info(level, msg, keysAndValues...)
}

func (s sink) Error(err error, msg string, keysAndValues ...any) {
	s.target().Error(err, msg, keysAndValues...)
}

func (s sink) WithValues(keysAndValues ...any) logr.LogSink {
	s.values = append(append([]any{}, s.values...), keysAndValues...)
	return s
}

func (s sink) WithName(name string) logr.LogSink {
	if s.name != "" {
		name = s.name + "/" + name
	}
	s.name = name
	return s
}

// Logr is the same output as a logr.Logger, for libraries (controller-runtime) that need one.
func Logr() logr.Logger { return logr.New(sink{}) }

// Logger is the structured logger the programs use.
type Logger interface {
	Error(msg string, err error, keysAndValues ...any)
	Warning(msg string, keysAndValues ...any)
	Info(msg string, keysAndValues ...any)
	Debug(msg string, keysAndValues ...any)
	Trace(msg string, keysAndValues ...any)
	All(msg string, keysAndValues ...any)
	Always(msg string, keysAndValues ...any)
	WithValues(keysAndValues ...any) Logger
	WithName(name string) Logger
}

type logger struct{ l logr.Logger }

// New returns the global logger.
func New() Logger { return logger{l: Logr()} }

func (g logger) Error(msg string, err error, kv ...any) { g.l.Error(err, msg, kv...) }
func (g logger) Warning(msg string, kv ...any)          { g.l.V(vWarning).Info(msg, kv...) }
func (g logger) Info(msg string, kv ...any)             { g.l.V(vInfo).Info(msg, kv...) }
func (g logger) Debug(msg string, kv ...any)            { g.l.V(vDebug).Info(msg, kv...) }
func (g logger) Trace(msg string, kv ...any)            { g.l.V(vTrace).Info(msg, kv...) }
func (g logger) All(msg string, kv ...any)              { g.l.V(vAll).Info(msg, kv...) }
func (g logger) Always(msg string, kv ...any)           { g.l.Info(msg, kv...) }
func (g logger) WithValues(kv ...any) Logger            { return logger{l: g.l.WithValues(kv...)} }
func (g logger) WithName(name string) Logger            { return logger{l: g.l.WithName(name)} }

// Package-level shorthands on the global logger.
func Error(msg string, err error, kv ...any) { New().Error(msg, err, kv...) }
func Warning(msg string, kv ...any)          { New().Warning(msg, kv...) }
func Info(msg string, kv ...any)             { New().Info(msg, kv...) }
func Debug(msg string, kv ...any)            { New().Debug(msg, kv...) }
func Trace(msg string, kv ...any)            { New().Trace(msg, kv...) }
func All(msg string, kv ...any)              { New().All(msg, kv...) }
func Always(msg string, kv ...any)           { New().Always(msg, kv...) }
func WithValues(kv ...any) Logger            { return New().WithValues(kv...) }
func WithName(name string) Logger            { return New().WithName(name) }
