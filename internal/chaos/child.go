// Package chaos is an adversarial multi-process harness for the zone's
// broadcast ring: writer processes that are stopped (SIGSTOP) and killed
// (SIGKILL) at random moments, and reader processes that verify every byte
// of every record they are handed and account for every sequence number.
// It proves, or disproves, that the ring never hands a reader bytes that
// the record's writer did not write.
//
// The processes are re-executions of the current binary: a main, or a
// test binary's init, calls MaybeChild first.
package chaos

import (
	"os"
	"strconv"
	"time"
)

// Environment of the child processes.
const (
	envRole    = "IPCBUS_CHAOS_ROLE" // "writer" or "reader"
	envDir     = "IPCBUS_CHAOS_DIR"
	envName    = "IPCBUS_CHAOS_NAME"
	envWriter  = "IPCBUS_CHAOS_WRITER"
	envInc     = "IPCBUS_CHAOS_INC"
	envMin     = "IPCBUS_CHAOS_MIN"
	envMax     = "IPCBUS_CHAOS_MAX"
	envSeed    = "IPCBUS_CHAOS_SEED"
	envStart   = "IPCBUS_CHAOS_START"
	envWaitMax = "IPCBUS_CHAOS_WAITMAX"
	envIndex   = "IPCBUS_CHAOS_INDEX"
)

// MaybeChild runs the chaos role named in the environment, if any, and
// exits with its status; otherwise it returns at once. Call it first in
// main, or in an init of a test package whose tests call Run.
func MaybeChild() {
	switch os.Getenv(envRole) {
	case "writer":
		os.Exit(writerMain())
	case "reader":
		os.Exit(readerMain())
	case "":
		return
	default:
		os.Stderr.WriteString("chaos: unknown role " + os.Getenv(envRole) + "\n")
		os.Exit(2)
	}
}

func envUint(k string) uint64 {
	v, _ := strconv.ParseUint(os.Getenv(k), 10, 64)
	return v
}

func envDuration(k string) time.Duration { return time.Duration(envUint(k)) }
