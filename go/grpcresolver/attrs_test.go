package grpcresolver

import (
	"fmt"
	"strings"
	"testing"

	etcdregistry "github.com/etcd-registry/etcd-registry/go"
	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/resolver"
)

// grpc prints an address's attributes in its logs and channelz traces: the node's info values
// (which may be secrets) are not in them, its name and info keys are.
func TestAddressAttributesPrintNoInfoValue(t *testing.T) {
	node := etcdregistry.Node{Name: "n1", Info: map[string]string{"token": "s3cret", "zone": "eu"}}
	addr := resolver.Address{Addr: "10.0.0.1:80", Attributes: attributes.New(nodeKey{}, nodeValue(node))}
	for _, printed := range []string{fmt.Sprint(addr), addr.Attributes.String()} {
		if strings.Contains(printed, "s3cret") || strings.Contains(printed, "eu]") {
			t.Errorf("an info value is printed: %s", printed)
		}
		if !strings.Contains(printed, "n1") || !strings.Contains(printed, "token") {
			t.Errorf("the node's name or info keys are not printed: %s", printed)
		}
	}
}
