// grpc runs gRPC servers that register their address in etcd and a client that finds them
// through go/grpcresolver: its calls spread over every server (round_robin) and follow them
// as they leave and join.
//
//	cargo build -p etcd-registry-ffi && eval "$(scripts/go-env.sh)"   # once, from the repository root
//	cd examples/go/grpc && ETCD_ENDPOINTS=127.0.0.1:2379 go run .     # a module of its own
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"time"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
	"github.com/etcd-registry/etcd-registry/go/grpcresolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

const service = "grpc-example"

func main() {
	endpoints := strings.Split(envOr("ETCD_ENDPOINTS", "127.0.0.1:2379"), ",")
	reg, err := etcdregistry.NewEtcdRegistry(endpoints, "/services", "", "", 5*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Two servers, each registered with its address in its info.
	names := map[string]string{} // address -> node name, to print who answered
	s1, g1 := serve(ctx, reg, "node-1", names)
	_, _ = serve(ctx, reg, "node-2", names)

	// The client resolves etcd-registry:///grpc-example through the registry.
	builder, err := grpcresolver.NewBuilder(reg)
	if err != nil {
		log.Fatal(err)
	}
	conn, err := grpc.NewClient("etcd-registry:///"+service,
		grpc.WithResolvers(builder),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"round_robin":{}}]}`))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	call := func() string {
		var p peer.Peer
		if _, err := health.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p)); err != nil {
			log.Fatalf("call failed: %v", err)
		}
		return names[p.Addr.String()]
	}
	// until calls until cond holds for the node that answered `in_a_row` times in a row.
	until := func(inARow int, cond func(node string) bool) {
		for n := 0; n < inARow; {
			if ctx.Err() != nil {
				log.Fatal("gave up waiting")
			}
			if cond(call()) {
				n++
			} else {
				n = 0
			}
		}
	}

	seen := map[string]bool{}
	until(1, func(node string) bool { seen[node] = true; return len(seen) == 2 })
	fmt.Println("calls reach node-1 and node-2")

	// node-1 leaves: it stops and unregisters; calls go on, to node-2 only.
	s1.GracefulStop()
	if err := g1.Unregister(ctx); err != nil {
		log.Fatal(err)
	}
	until(6, func(node string) bool { return node == "node-2" })
	fmt.Println("node-1 left: calls go to node-2")

	// node-3 joins: it gets calls.
	serve(ctx, reg, "node-3", names)
	until(1, func(node string) bool { return node == "node-3" })
	fmt.Println("node-3 joined: calls reach it")
}

// serve starts a gRPC server (grpc's health service) on a free loopback port and registers it.
func serve(ctx context.Context, reg *etcdregistry.EtcdRegistry, name string, names map[string]string) (*grpc.Server, *etcdregistry.Registration) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go s.Serve(l)
	addr := l.Addr().String()
	names[addr] = name
	g, err := reg.Register(ctx, service, etcdregistry.Node{Name: name, Info: map[string]string{"address": addr}}, 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	select {
	case <-g.Done():
	case err := <-g.Errors():
		log.Fatalf("registering %s: %v", name, err)
	}
	return s, g
}

func envOr(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}
