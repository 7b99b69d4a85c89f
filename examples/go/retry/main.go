// retry shows the keep-alive retry: a node stays registered while etcd goes away and comes
// back. Stop etcd while it runs and start it again:
//
//	Registered node localhost:50000 with lease ID 694d8a1f0c3e2a04
//	keep-alive lost for node localhost:50000: connection: ...
//	keep-alive lost, retrying in 1s (attempt 1)
//	keep-alive lost, retrying in 2s (attempt 2)
//	re-registered node localhost:50000 with lease ID 694d8a1f0c3e2a04
//
//	ETCD_ENDPOINTS=127.0.0.1:2379 go run ./retry [-duration 30s] [-v]
//
// It runs until Ctrl+C (or for -duration), then closes the registry, which revokes the lease
// and so removes the key at once. -v prints the library's warnings on stderr.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
)

const (
	service = "retry-example"
	address = "localhost:50000"
)

func main() {
	duration := flag.Duration("duration", 0, "exit after this long (0: at Ctrl+C)")
	verbose := flag.Bool("v", false, "print the library's warnings on stderr")
	flag.Parse()
	log.SetFlags(0)
	if *verbose {
		logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
		if err := etcdregistry.SetLogger(logger); err != nil {
			log.Fatal(err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}

	endpoints := strings.Split(envOr("ETCD_ENDPOINTS", "127.0.0.1:2379"), ",")
	reg, err := etcdregistry.New(etcdregistry.Config{
		Endpoints: endpoints,
		BasePath:  "/services",
		Timeout:   3 * time.Second,
		// Retries start at 1 s and double up to 8 s (default 30 s).
		BackoffMin: time.Second,
		BackoffMax: 8 * time.Second,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("Using etcd at %s\n", strings.Join(endpoints, ","))

	// The registration lives as long as ctx; its status events tell what happens to it.
	registration, err := reg.Register(ctx, service, etcdregistry.Node{Name: address}, 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	registered := false
	for event := range registration.Events() {
		switch event.Kind {
		case etcdregistry.StatusRegistered:
			registered = true
			fmt.Printf("Registered node %s with lease ID %x\n", address, event.LeaseID)
			fmt.Println("Node will stay registered even if etcd becomes temporarily unavailable")
			fmt.Println("Try stopping and restarting etcd to see the automatic retry in action")
			fmt.Println("Press Ctrl+C to exit")
			printTracked(reg)
		case etcdregistry.StatusFailed:
			fmt.Printf("registration of node %s failed: %v\n", address, event.Err)
		case etcdregistry.StatusKeepAliveLost:
			fmt.Printf("keep-alive lost for node %s: %v\n", address, event.Err)
		case etcdregistry.StatusRetrying:
			what := "keep-alive lost"
			if !registered {
				what = "not registered yet"
			}
			fmt.Printf("%s, retrying in %v (attempt %d)\n", what, event.Delay.Round(time.Second), event.Attempt)
		case etcdregistry.StatusReregistered:
			fmt.Printf("re-registered node %s with lease ID %x\n", address, event.LeaseID)
			printTracked(reg)
		case etcdregistry.StatusUnregistered:
			fmt.Printf("unregistered node %s: %v\n", address, event.Err)
		}
	}
	// The events end when ctx does: the registration has been unregistered.
	if err := reg.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("Closed")
}

func printTracked(reg *etcdregistry.EtcdRegistry) {
	nodes, err := reg.GetServiceNodes(service)
	if err != nil {
		fmt.Printf("listing failed: %v\n", err)
		return
	}
	fmt.Printf("Currently tracking %d node(s)\n", len(nodes))
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
