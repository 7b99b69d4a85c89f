package grpcresolver_test

import (
	"sync/atomic"
	"testing"

	"github.com/etcd-registry/etcd-registry/go/grpcresolver"
	"google.golang.org/grpc"
	"google.golang.org/grpc/balancer"
	"google.golang.org/grpc/balancer/base"
	"google.golang.org/grpc/credentials/insecure"
)

// A balancer of the kind the node attributes are for: it sends calls only to the nodes whose
// info says version "2", reading the info with grpcresolver.NodeOf from each address.
const version2Only = "etcd_registry_test_version_2_only"

func init() {
	balancer.Register(base.NewBalancerBuilder(version2Only, version2PickerBuilder{}, base.Config{}))
}

type version2PickerBuilder struct{}

func (version2PickerBuilder) Build(info base.PickerBuildInfo) balancer.Picker {
	p := &roundRobinPicker{}
	for sc, sci := range info.ReadySCs {
		if node, ok := grpcresolver.NodeOf(sci.Address.Attributes); ok && node.Info["version"] == "2" {
			p.subConns = append(p.subConns, sc)
		}
	}
	if len(p.subConns) == 0 {
		return base.NewErrPicker(balancer.ErrNoSubConnAvailable) // wait for a new picker
	}
	return p
}

type roundRobinPicker struct {
	subConns []balancer.SubConn
	next     atomic.Uint32
}

func (p *roundRobinPicker) Pick(balancer.PickInfo) (balancer.PickResult, error) {
	i := p.next.Add(1) % uint32(len(p.subConns))
	return balancer.PickResult{SubConn: p.subConns[i]}, nil
}

// The node's info reaches the balancer through the addresses' attributes, and follows an
// info change.
func TestBalancerReadsNodeInfo(t *testing.T) {
	h := newHarness(t)
	reg := newRegistry(t, h)
	const service = "versioned"
	_, addr1 := startServer(t)
	_, addr2 := startServer(t)
	register(t, reg, service, "node1", map[string]string{"address": addr1, "version": "1"})
	register(t, reg, service, "node2", map[string]string{"address": addr2, "version": "2"})
	b := newBuilder(t, reg)
	conn, err := grpc.NewClient("etcd-registry:///"+service,
		grpc.WithResolvers(b),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(`{"loadBalancingConfig":[{"`+version2Only+`":{}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	if got := servedBy(t, conn, 20); got[addr2] != 20 {
		t.Fatalf("calls went to %v, want all to node2 (version 2) %s", got, addr2)
	}
	// node1 is upgraded: re-registered with version 2, it gets calls too.
	register(t, reg, service, "node1", map[string]string{"address": addr1, "version": "2"})
	waitServedBy(t, conn, addr1, addr2)
}
