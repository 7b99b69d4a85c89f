// basic registers a node, lists its service and watches it change, then closes the registry
// (which deletes its keys at once).
//
//	cargo build -p etcd-registry-ffi && eval "$(scripts/go-env.sh)"   # once, from the repository root
//	ETCD_ENDPOINTS=127.0.0.1:2379 go run ./basic                      # from examples/go
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
)

func main() {
	endpoints := strings.Split(envOr("ETCD_ENDPOINTS", "127.0.0.1:2379"), ",")
	reg, err := etcdregistry.NewEtcdRegistry(endpoints, "/services", "", "", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Register, and wait for the first registration (or its first failure).
	node := etcdregistry.Node{Name: "node-1", Info: map[string]string{"address": "10.0.0.5:8080", "version": "1.0.0"}}
	done, errChan, err := reg.RegisterNode(ctx, "basic-example", node, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	select {
	case <-done:
		fmt.Println("registered node-1")
	case err := <-errChan:
		log.Fatalf("registration failed: %v", err)
	}

	nodes, err := reg.GetServiceNodes("basic-example")
	if err != nil {
		log.Fatal(err)
	}
	for _, n := range nodes {
		fmt.Printf("listed %s %v\n", n.Name, n.Info)
	}

	// Watch: one added event per present node, then every change.
	watch, err := reg.WatchService(ctx, "basic-example")
	if err != nil {
		log.Fatal(err)
	}
	defer watch.Close()
	nodeCtx, unregisterNode2 := context.WithCancel(ctx)
	done2, errChan2, err := reg.RegisterNode(nodeCtx, "basic-example", etcdregistry.Node{Name: "node-2"}, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	for event := range watch.Events() {
		fmt.Printf("watch: %s %s (revision %d)\n", event.Type, event.Node.Name, event.Revision)
		switch {
		case event.Type == etcdregistry.WatchAdded && event.Node.Name == "node-2":
			<-done2
			unregisterNode2() // ends node-2's registration: its key is deleted at once
			// Once registered, the end by its context sends nothing: errChan2 is only closed.
			for err := range errChan2 {
				fmt.Printf("node-2 error: %v\n", err)
			}
			fmt.Println("node-2 ended")
		case event.Type == etcdregistry.WatchRemoved && event.Node.Name == "node-2":
			live, err := watch.Nodes()
			if err != nil {
				log.Fatal(err)
			}
			fmt.Printf("live nodes: %d\n", len(live))
			return // the deferred Close unregisters node-1
		}
	}
	log.Fatal("the watch ended early")
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
