// Command kube-validate checks Kubernetes manifests offline against the
// Kubernetes API's own Go types (k8s.io/api): every document is decoded
// strictly, so an unknown or misspelt field, a duplicate key, a value of
// the wrong type or an invalid quantity is an error, and a few rules of the
// API server's validation are checked on top (names, selectors, ports,
// references between the objects). It prints the decoded objects as one
// JSON array for further checks.
//
//	kube-validate [-external KIND/NAME]... FILE...
//
// `-external` names an object that is referenced but created outside the
// files (a ConfigMap made with `kubectl create configmap --from-file`).
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

type externals []string

func (e *externals) String() string     { return strings.Join(*e, ",") }
func (e *externals) Set(v string) error { *e = append(*e, v); return nil }

// doc is one decoded manifest.
type doc struct {
	File   string `json:"file"`
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Object any    `json:"object"`
}

// newObject returns the typed object for an apiVersion and kind.
func newObject(apiVersion, kind string) (any, error) {
	switch apiVersion + " " + kind {
	case "apps/v1 Deployment":
		return &appsv1.Deployment{}, nil
	case "v1 Service":
		return &corev1.Service{}, nil
	case "v1 ConfigMap":
		return &corev1.ConfigMap{}, nil
	case "v1 Secret":
		return &corev1.Secret{}, nil
	case "v1 ServiceAccount":
		return &corev1.ServiceAccount{}, nil
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, nil
	}
	return nil, fmt.Errorf("unsupported apiVersion/kind %q/%q", apiVersion, kind)
}

func main() {
	var ext externals
	flag.Var(&ext, "external", "KIND/NAME of an object created outside the files (repeatable)")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: kube-validate [-external KIND/NAME]... FILE...")
		os.Exit(2)
	}
	var docs []doc
	var problems []string
	fail := func(file, format string, args ...any) {
		problems = append(problems, file+": "+fmt.Sprintf(format, args...))
	}
	for _, file := range flag.Args() {
		f, err := os.Open(file)
		if err != nil {
			fail(file, "%v", err)
			continue
		}
		reader := utilyaml.NewYAMLReader(bufio.NewReader(f))
		for {
			raw, err := reader.Read()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				fail(file, "reading YAML: %v", err)
				break
			}
			if len(bytes.TrimSpace(stripComments(raw))) == 0 {
				continue
			}
			var meta metav1.TypeMeta
			if err := yaml.Unmarshal(raw, &meta); err != nil {
				fail(file, "%v", err)
				continue
			}
			obj, err := newObject(meta.APIVersion, meta.Kind)
			if err != nil {
				fail(file, "%v", err)
				continue
			}
			if err := yaml.UnmarshalStrict(raw, obj); err != nil {
				fail(file, "%s: %v", meta.Kind, err)
				continue
			}
			name := objectMeta(obj).Name
			for _, msg := range validation.IsDNS1123Subdomain(name) {
				fail(file, "%s %q: metadata.name: %s", meta.Kind, name, msg)
			}
			docs = append(docs, doc{File: file, Kind: meta.Kind, Name: name, Object: obj})
		}
		f.Close()
	}
	known := map[string]bool{}
	for _, e := range ext {
		known[e] = true
	}
	for _, d := range docs {
		known[d.Kind+"/"+d.Name] = true
	}
	for _, d := range docs {
		for _, p := range check(d, docs, known) {
			fail(d.File, "%s %q: %s", d.Kind, d.Name, p)
		}
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(os.Stderr, p)
		}
		os.Exit(1)
	}
	out, err := json.MarshalIndent(docs, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Println(string(out))
}

// stripComments drops whole-line comments (a document of comments only is empty).
func stripComments(raw []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(raw, []byte("\n")) {
		t := bytes.TrimSpace(line)
		if len(t) == 0 || t[0] == '#' || bytes.Equal(t, []byte("---")) {
			continue
		}
		out.Write(line)
		out.WriteByte('\n')
	}
	return out.Bytes()
}

func objectMeta(obj any) *metav1.ObjectMeta {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return &o.ObjectMeta
	case *corev1.Service:
		return &o.ObjectMeta
	case *corev1.ConfigMap:
		return &o.ObjectMeta
	case *corev1.Secret:
		return &o.ObjectMeta
	case *corev1.ServiceAccount:
		return &o.ObjectMeta
	case *policyv1.PodDisruptionBudget:
		return &o.ObjectMeta
	}
	return &metav1.ObjectMeta{}
}

// check applies rules the API server (or the kubelet) would enforce.
func check(d doc, docs []doc, known map[string]bool) []string {
	var p []string
	switch o := d.Object.(type) {
	case *appsv1.Deployment:
		sel, err := metav1.LabelSelectorAsSelector(o.Spec.Selector)
		if o.Spec.Selector == nil || err != nil || sel.Empty() {
			p = append(p, fmt.Sprintf("spec.selector is missing or invalid: %v", err))
		} else if !sel.Matches(labels.Set(o.Spec.Template.Labels)) {
			p = append(p, "spec.selector does not match the template's labels")
		}
		p = append(p, checkPod(&o.Spec.Template.Spec, known)...)
	case *corev1.Service:
		if len(o.Spec.Ports) == 0 {
			p = append(p, "spec.ports is empty")
		}
		if !selectsSomething(labels.SelectorFromSet(o.Spec.Selector), docs) {
			p = append(p, "spec.selector matches no Deployment's pods")
		}
		for _, port := range o.Spec.Ports {
			if port.TargetPort.Type == intstr.String && !namedPortExists(port.TargetPort.StrVal, o.Spec.Selector, docs) {
				p = append(p, fmt.Sprintf("targetPort %q is no container port of the selected pods", port.TargetPort.StrVal))
			}
		}
	case *policyv1.PodDisruptionBudget:
		if (o.Spec.MinAvailable == nil) == (o.Spec.MaxUnavailable == nil) {
			p = append(p, "exactly one of minAvailable and maxUnavailable must be set")
		}
		sel, err := metav1.LabelSelectorAsSelector(o.Spec.Selector)
		if err != nil || !selectsSomething(sel, docs) {
			p = append(p, "spec.selector matches no Deployment's pods")
		}
	}
	return p
}

func selectsSomething(sel labels.Selector, docs []doc) bool {
	for _, d := range docs {
		if dep, ok := d.Object.(*appsv1.Deployment); ok && !sel.Empty() && sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
			return true
		}
	}
	return false
}

func namedPortExists(name string, selector map[string]string, docs []doc) bool {
	sel := labels.SelectorFromSet(selector)
	for _, d := range docs {
		dep, ok := d.Object.(*appsv1.Deployment)
		if !ok || !sel.Matches(labels.Set(dep.Spec.Template.Labels)) {
			continue
		}
		for _, c := range dep.Spec.Template.Spec.Containers {
			for _, port := range c.Ports {
				if port.Name == name {
					return true
				}
			}
		}
	}
	return false
}

func checkPod(spec *corev1.PodSpec, known map[string]bool) []string {
	var p []string
	if len(spec.Containers) == 0 {
		p = append(p, "no containers")
	}
	if spec.ServiceAccountName != "" && !known["ServiceAccount/"+spec.ServiceAccountName] {
		p = append(p, fmt.Sprintf("serviceAccountName %q is not defined", spec.ServiceAccountName))
	}
	volumes := map[string]bool{}
	for _, v := range spec.Volumes {
		if volumes[v.Name] {
			p = append(p, fmt.Sprintf("volume %q declared twice", v.Name))
		}
		volumes[v.Name] = true
		if v.ConfigMap != nil && !known["ConfigMap/"+v.ConfigMap.Name] {
			p = append(p, fmt.Sprintf("volume %q: ConfigMap %q is not defined", v.Name, v.ConfigMap.Name))
		}
		if v.Secret != nil && !known["Secret/"+v.Secret.SecretName] {
			p = append(p, fmt.Sprintf("volume %q: Secret %q is not defined", v.Name, v.Secret.SecretName))
		}
	}
	for _, c := range spec.Containers {
		if c.Image == "" {
			p = append(p, fmt.Sprintf("container %q has no image", c.Name))
		}
		ports := map[string]bool{}
		for _, port := range c.Ports {
			if port.Name != "" {
				for _, msg := range validation.IsValidPortName(port.Name) {
					p = append(p, fmt.Sprintf("container %q: port name %q: %s", c.Name, port.Name, msg))
				}
				ports[port.Name] = true
			}
		}
		for _, m := range c.VolumeMounts {
			if !volumes[m.Name] {
				p = append(p, fmt.Sprintf("container %q mounts undeclared volume %q", c.Name, m.Name))
			}
		}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && !known["Secret/"+e.ValueFrom.SecretKeyRef.Name] {
				p = append(p, fmt.Sprintf("env %s: Secret %q is not defined", e.Name, e.ValueFrom.SecretKeyRef.Name))
			}
		}
		for what, probe := range map[string]*corev1.Probe{
			"startupProbe": c.StartupProbe, "livenessProbe": c.LivenessProbe, "readinessProbe": c.ReadinessProbe,
		} {
			if probe == nil || probe.HTTPGet == nil {
				continue
			}
			port := probe.HTTPGet.Port
			if port.Type == intstr.String && !ports[port.StrVal] {
				p = append(p, fmt.Sprintf("container %q: %s names port %q, which the container does not declare", c.Name, what, port.StrVal))
			}
		}
	}
	return p
}
