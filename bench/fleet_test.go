package main

import (
	"os"
	"testing"
)

// TestMain lets the test binary be the fleet's worker processes too.
func TestMain(m *testing.M) {
	if os.Getenv("BENCH_WORKER") == "fleet" {
		os.Exit(fleetWorker())
	}
	os.Exit(m.Run())
}

// TestSimulatedFleet: ten hosts (ten zones, a worker process each, one
// NATS server): every event posted on host 0 reaches every other host,
// once, none lost, paced and in a burst.
func TestSimulatedFleet(t *testing.T) {
	o := fleetOpts{Hosts: 10, Workers: 1, Rate: 1000, Paced: 300, Burst: 5000, ZoneSize: 16 << 20, Payload: 16}
	rep, err := runFleet(o, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if rep.Lost != 0 || rep.Duplicated != 0 {
		t.Fatalf("lost %d, duplicated %d across %d hosts", rep.Lost, rep.Duplicated, o.Hosts)
	}
}
