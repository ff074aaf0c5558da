// chart-render renders a Helm chart the way Helm's engine does, for checks where no Helm binary
// can be installed: Go's text/template with the sprig functions Helm registers, plus include,
// tpl, required, fail, toYaml, fromYaml, toJson and .Files.Get; values.yaml deep-merged with
// each -f file and --set; numbers as float64, as Helm reads them. It then checks every rendered
// object: valid YAML with apiVersion, kind and a DNS-1123 metadata.name of at most 63
// characters, and label values of at most 63.
//
//	chart-render [-f values.yaml]... [--set a.b=v]... [--notes] [--release NAME] CHART
//
// Prints the manifests (or NOTES.txt with --notes); exits 1 with the template's error (a
// `fail` or `required` message included) or the failed check.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"gopkg.in/yaml.v3"
)

type files map[string][]byte

// Get is .Files.Get: a chart file's contents, or "".
func (f files) Get(name string) string { return string(f[name]) }

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "chart-render:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	var valueFiles, sets listFlag
	release, namespace, notes, chart := "release", "default", false, ""
	for i := 0; i < len(args); i++ {
		next := func() string {
			i++
			if i < len(args) {
				return args[i]
			}
			return ""
		}
		switch args[i] {
		case "-f", "--values":
			valueFiles.Set(next())
		case "--set":
			sets.Set(next())
		case "--release":
			release = next()
		case "--namespace":
			namespace = next()
		case "--notes":
			notes = true
		default:
			chart = args[i]
		}
	}
	if chart == "" {
		return errors.New("usage: chart-render [-f values.yaml]... [--set a.b=v]... [--notes] [--release NAME] CHART")
	}
	meta := map[string]interface{}{}
	if err := readYaml(filepath.Join(chart, "Chart.yaml"), &meta); err != nil {
		return err
	}
	values := map[string]interface{}{}
	if err := readYaml(filepath.Join(chart, "values.yaml"), &values); err != nil {
		return err
	}
	for _, f := range valueFiles {
		more := map[string]interface{}{}
		if err := readYaml(f, &more); err != nil {
			return err
		}
		merge(values, more)
	}
	for _, s := range sets {
		k, v, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("--set %s: expected key=value", s)
		}
		setPath(values, strings.Split(k, "."), scalar(v))
	}
	values = floats(values).(map[string]interface{})

	name := fmt.Sprint(meta["name"])
	all := files{}
	templates := map[string]string{}
	err := filepath.Walk(chart, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chart, path)
		text, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.HasPrefix(rel, "templates/") {
			templates[name+"/"+rel] = string(text)
		} else {
			all[rel] = text
		}
		return nil
	})
	if err != nil {
		return err
	}

	t := template.New("gotpl").Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	includes := 0
	funcs["include"] = func(name string, data interface{}) (string, error) {
		includes++
		if includes > 1000 {
			return "", errors.New("include nested too deep")
		}
		defer func() { includes-- }()
		var b bytes.Buffer
		err := t.ExecuteTemplate(&b, name, data)
		return b.String(), err
	}
	funcs["tpl"] = func(text string, data interface{}) (string, error) {
		c, err := t.Clone()
		if err != nil {
			return "", err
		}
		if _, err := c.New("tpl").Parse(text); err != nil {
			return "", err
		}
		var b bytes.Buffer
		err = c.ExecuteTemplate(&b, "tpl", data)
		return b.String(), err
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil || v == "" {
			return nil, errors.New(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", errors.New(msg) }
	funcs["toYaml"] = func(v interface{}) string {
		var b bytes.Buffer
		e := yaml.NewEncoder(&b)
		e.SetIndent(2)
		if err := e.Encode(v); err != nil {
			return ""
		}
		return strings.TrimSuffix(b.String(), "\n")
	}
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["toJson"] = func(v interface{}) string {
		b, _ := json.Marshal(v)
		return string(b)
	}
	t.Funcs(funcs)
	names := make([]string, 0, len(templates))
	for n := range templates {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if _, err := t.New(n).Parse(templates[n]); err != nil {
			return err
		}
	}

	top := func(tname string) map[string]interface{} {
		return map[string]interface{}{
			"Values":   values,
			"Release":  map[string]interface{}{"Name": release, "Namespace": namespace, "Service": "Helm", "IsInstall": true, "IsUpgrade": false, "Revision": 1},
			"Chart":    map[string]interface{}{"Name": meta["name"], "Version": meta["version"], "AppVersion": meta["appVersion"]},
			"Template": map[string]interface{}{"Name": tname, "BasePath": name + "/templates"},
			"Files":    all,
			"Capabilities": map[string]interface{}{
				"KubeVersion": map[string]interface{}{"Version": "v1.30.0", "Major": "1", "Minor": "30"},
			},
		}
	}
	render := func(n string) (string, error) {
		var b bytes.Buffer
		if err := t.ExecuteTemplate(&b, n, top(n)); err != nil {
			return "", err
		}
		return strings.ReplaceAll(b.String(), "<no value>", ""), nil
	}

	if notes {
		out, err := render(name + "/templates/NOTES.txt")
		if err != nil {
			return err
		}
		fmt.Print(out)
		return nil
	}
	var stream strings.Builder
	for _, n := range names {
		base := filepath.Base(n)
		if strings.HasPrefix(base, "_") || base == "NOTES.txt" {
			continue
		}
		out, err := render(n)
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) == "" {
			continue
		}
		if err := check(n, out); err != nil {
			return err
		}
		fmt.Fprintf(&stream, "---\n# Source: %s\n%s\n", n, strings.TrimSpace(out))
	}
	fmt.Print(stream.String())
	return nil
}

var dns1123 = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// check validates the objects one rendered template holds.
func check(source, text string) error {
	dec := yaml.NewDecoder(strings.NewReader(text))
	for {
		var obj map[string]interface{}
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: not YAML: %v\n%s", source, err, text)
		}
		if obj == nil {
			continue
		}
		metadata, _ := obj["metadata"].(map[string]interface{})
		name, _ := metadata["name"].(string)
		if obj["apiVersion"] == nil || obj["kind"] == nil || name == "" {
			return fmt.Errorf("%s: an object needs apiVersion, kind and metadata.name", source)
		}
		if len(name) > 63 || !dns1123.MatchString(name) {
			return fmt.Errorf("%s: %v name %q is not a DNS label of at most 63 characters", source, obj["kind"], name)
		}
		labels, _ := metadata["labels"].(map[string]interface{})
		for k, v := range labels {
			if s := fmt.Sprint(v); len(s) > 63 {
				return fmt.Errorf("%s: label %s=%q is longer than 63 characters", source, k, s)
			}
		}
	}
}

func readYaml(path string, out *map[string]interface{}) error {
	text, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(text, out); err != nil {
		return fmt.Errorf("%s: %v", path, err)
	}
	if *out == nil {
		*out = map[string]interface{}{}
	}
	return nil
}

// merge lays `over` onto `base` as Helm does: maps merge key by key, a null removes the key.
func merge(base, over map[string]interface{}) {
	for k, v := range over {
		if v == nil {
			delete(base, k)
			continue
		}
		if m, ok := v.(map[string]interface{}); ok {
			if b, ok := base[k].(map[string]interface{}); ok {
				merge(b, m)
				continue
			}
		}
		base[k] = v
	}
}

func setPath(m map[string]interface{}, path []string, v interface{}) {
	for _, p := range path[:len(path)-1] {
		next, ok := m[p].(map[string]interface{})
		if !ok {
			next = map[string]interface{}{}
			m[p] = next
		}
		m = next
	}
	m[path[len(path)-1]] = v
}

func scalar(s string) interface{} {
	switch s {
	case "true":
		return true
	case "false":
		return false
	case "null":
		return nil
	}
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return i
	}
	return s
}

// floats turns every integer into a float64, as Helm's JSON round trip of values does.
func floats(v interface{}) interface{} {
	switch x := v.(type) {
	case map[string]interface{}:
		for k, e := range x {
			x[k] = floats(e)
		}
		return x
	case []interface{}:
		for i, e := range x {
			x[i] = floats(e)
		}
		return x
	case int:
		return float64(x)
	case int64:
		return float64(x)
	default:
		return v
	}
}
