package etcdregistry_test

// Runnable examples, shown with the package's documentation. `go test` runs them against the
// etcd that TestMain starts (its endpoints in ETCD_ENDPOINTS) and checks what they print.

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
)

// endpoints are the etcd endpoints of the examples, from ETCD_ENDPOINTS.
func endpoints() []string {
	if e := os.Getenv("ETCD_ENDPOINTS"); e != "" {
		return strings.Split(e, ",")
	}
	return []string{"127.0.0.1:2379"}
}

// Register a node, wait until it is in etcd, and find it by listing its service.
func Example() {
	reg, err := etcdregistry.NewEtcdRegistry(endpoints(), "/services", "", "", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close() // deletes the keys of every node registered here at once

	// The node stays registered (kept alive, registered again after any outage) until ctx ends.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	node := etcdregistry.Node{Name: "node-1", Info: map[string]string{"address": "10.0.0.5:8080"}}
	done, errChan, err := reg.RegisterNode(ctx, "example-api", node, 10*time.Second)
	if err != nil {
		log.Fatal(err) // a bad argument: an empty name, a TTL <= 0 ...
	}
	select {
	case <-done:
	case err := <-errChan:
		log.Fatal(err)
	}

	nodes, err := reg.GetServiceNodes("example-api")
	if err != nil {
		log.Fatal(err)
	}
	for _, n := range nodes {
		fmt.Println(n.Name, n.Info["address"])
	}
	// Output:
	// node-1 10.0.0.5:8080
}

// Follow a service: the watch begins with one WatchAdded per node present, then reports every
// change until its context ends or it is closed.
func ExampleEtcdRegistry_WatchService() {
	reg, err := etcdregistry.NewEtcdRegistry(endpoints(), "/services", "", "", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	watch, err := reg.WatchService(ctx, "example-watched")
	if err != nil {
		log.Fatal(err) // etcd unreachable now, or an empty service name
	}
	defer watch.Close()

	nodeCtx, unregister := context.WithCancel(ctx)
	defer unregister()
	_, _, err = reg.RegisterNode(nodeCtx, "example-watched", etcdregistry.Node{Name: "node-1"}, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	for ev := range watch.Events() {
		fmt.Println(ev.Type, ev.Node.Name)
		if ev.Type == etcdregistry.WatchAdded {
			unregister() // its key is deleted at once: the watch sees it removed
		} else {
			break
		}
	}
	// Output:
	// added node-1
	// removed node-1
}

// Register returns the Registration, whose status events tell what happens to the node:
// registered, keep-alive lost, retrying (with the delay), re-registered, unregistered.
func ExampleEtcdRegistry_Register() {
	reg, err := etcdregistry.NewEtcdRegistry(endpoints(), "/services", "", "", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()

	g, err := reg.Register(context.Background(), "example-status", etcdregistry.Node{Name: "node-1"}, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	for ev := range g.Events() {
		switch ev.Kind {
		case etcdregistry.StatusRegistered:
			fmt.Println("registered; state:", g.State())
			if err := g.Unregister(context.Background()); err != nil {
				log.Fatal(err)
			}
		case etcdregistry.StatusRetrying:
			fmt.Printf("attempt %d in %v: %v\n", ev.Attempt, ev.Delay, ev.Err)
		case etcdregistry.StatusUnregistered:
			fmt.Println("unregistered:", errors.Is(ev.Err, etcdregistry.ErrUnregistered))
		}
	}
	// The events channel is closed after the last event.
	fmt.Println("state:", g.State())
	// Output:
	// registered; state: registered
	// unregistered: true
	// state: unregistered
}

// Errors match the package's sentinel errors with errors.Is.
func ExampleEtcdRegistry_GetServiceNodes_errors() {
	reg, err := etcdregistry.NewEtcdRegistry(endpoints(), "/services", "", "", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	_, err = reg.GetServiceNodes("")
	fmt.Println(errors.Is(err, etcdregistry.ErrInvalidArgument))

	reg.Close()
	_, err = reg.GetServiceNodes("example-api")
	fmt.Println(errors.Is(err, etcdregistry.ErrClosed))
	// Output:
	// true
	// true
}
