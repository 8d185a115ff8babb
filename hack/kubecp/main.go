// Command kubecp is a multi-call binary holding a whole local Kubernetes control plane: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler and kubectl (so tests and READMEs use `kubectl apply -f` as users
// do), linked from the upstream Go modules because no container runtime
// (kind) or release download is available here.
//
// It dispatches on the name it was invoked as (a symlink named kube-apiserver, ...) or, failing that, on its
// first argument: `kubecp kube-apiserver --etcd-servers=...`. The remaining arguments are the upstream
// command's own flags, unchanged.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"

	// Imported for their side effects, as the upstream main packages do.
	_ "time/tzdata" // CronJob time zones

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	_ "k8s.io/component-base/metrics/prometheus/workqueue"
	kubectl "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

// cobraCommands builds the upstream Kubernetes commands lazily so only the chosen one registers its flags.
var cobraCommands = map[string]func() *cobra.Command{
	"kube-apiserver":          apiserver.NewAPIServerCommand,
	"kube-controller-manager": controllermanager.NewControllerManagerCommand,
	"kube-scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubectl":                 kubectl.NewDefaultKubectlCommand,
}

func usage() {
	names := []string{"etcd"}
	for name := range cobraCommands {
		names = append(names, name)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: kubecp COMMAND [flags]\ncommands: %v\n", names)
}

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if _, ok := cobraCommands[name]; !ok && name != "etcd" {
		if len(os.Args) < 2 {
			usage()
			os.Exit(2)
		}
		name, args = os.Args[1], os.Args[2:]
	}
	if name == "etcd" {
		// etcdmain parses its argv like the etcd binary does, program name first.
		etcdmain.Main(append([]string{"etcd"}, args...))
		return
	}
	newCommand, ok := cobraCommands[name]
	if !ok {
		usage()
		os.Exit(2)
	}
	command := newCommand()
	command.SetArgs(args)
	if name == "kubectl" {
		// kubectl prints its own errors; cli.Run would print them twice.
		if err := cli.RunNoErrOutput(command); err != nil {
			os.Exit(1)
		}
		return
	}
	os.Exit(cli.Run(command))
}
