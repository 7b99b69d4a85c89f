// migrate is a program written for go.lumeweb.com/etcd-registry, the library this package
// replaces. The only line changed to move it over is the import path (marked below): the
// constructor, RegisterNode's done and errChan, GetServiceNodes and Node are the same, and so
// is what it sees — a timeout that matches context.DeadlineExceeded, errChan closed when the
// registration ends, nodes in descending key order, a nil Info stored as an empty value.
//
//	cargo build -p etcd-registry-ffi && eval "$(scripts/go-env.sh)"   # once, from the repository root
//	ETCD_ENDPOINTS=127.0.0.1:2379 go run ./migrate                    # from examples/go
package main

import (
	"context"
	"errors"
	"log"
	"os"
	"strings"
	"time"

	// Was: etcdregistry "go.lumeweb.com/etcd-registry"
	etcdregistry "github.com/etcd-registry/etcd-registry/go"
)

func main() {
	endpoints := strings.Split(envOr("ETCD_ENDPOINTS", "127.0.0.1:2379"), ",")
	registry, err := etcdregistry.NewEtcdRegistry(endpoints, "/services", "", "", 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	var errChans []<-chan error
	for _, node := range []etcdregistry.Node{
		{Name: "api-server-1", Info: map[string]string{"version": "1.0.0", "address": "localhost:8080"}},
		{Name: "api-server-2", Info: map[string]string{"version": "1.0.0", "address": "localhost:8081"}},
		{Name: "api-server-3"}, // no info: stored as an empty value
	} {
		done, errChan, err := registry.RegisterNode(ctx, "api", node, 30*time.Second)
		if err != nil {
			log.Fatal(err)
		}
		select {
		case <-done:
			log.Printf("Node %s registered successfully", node.Name)
		case err := <-errChan:
			log.Fatalf("Registration failed: %v", err)
		}
		errChans = append(errChans, errChan)
	}

	nodes, err := registry.GetServiceNodes("api")
	if err != nil {
		log.Fatal(err)
	}
	for _, n := range nodes {
		log.Printf("Found node: %s with info: %v", n.Name, n.Info)
	}
	if len(nodes) != 3 || nodes[0].Name != "api-server-3" || nodes[0].Info != nil {
		log.Fatalf("want api-server-3 (nil info), -2, -1 in that order, got %v", nodes)
	}

	// Cancelling the context unregisters the nodes; each errChan is closed (as with the old
	// library, no ctx.Err() is sent once a node was registered).
	cancel()
	for _, errChan := range errChans {
		for err := range errChan {
			log.Printf("registration ended: %v", err)
		}
	}

	// A registry whose etcd cannot be reached answers after its timeout with a deadline error.
	unreachable, err := etcdregistry.NewEtcdRegistry([]string{"127.0.0.1:1"}, "/services", "", "", time.Second)
	if err != nil {
		log.Fatal(err)
	}
	if _, err := unreachable.GetServiceNodes("api"); !errors.Is(err, context.DeadlineExceeded) {
		log.Fatalf("want context.DeadlineExceeded, got %v", err)
	} else {
		log.Printf("unreachable etcd: %v", err)
	}
	log.Println("Done")
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
