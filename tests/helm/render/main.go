// render — `helm template` for the mx chart without helm: Go's text/template
// with sprig, plus the functions and objects Helm adds that the chart uses
// (include, tpl, toYaml, fromYaml, toJson, required, fail, .Files.Get,
// .Values, .Release, .Chart, .Capabilities, .Template).
//
// Built in GOPATH mode against Debian's packages (golang-go,
// golang-github-masterminds-sprig-dev, golang-k8s-sigs-yaml-dev):
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o render ./tests/helm/render
//	render [-f values.yaml]... [-namespace NS] [-release NAME] [-notes] CHART_DIR
//
// Output is a YAML stream like helm template's: "---", "# Source: mx/templates/X",
// then the document; templates that render to nothing are left out. -notes
// prints the rendered NOTES.txt instead. Errors (a required value, a
// template error) exit 1 with the message on stderr.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	"sigs.k8s.io/yaml"
)

type valueFiles []string

func (v *valueFiles) String() string     { return strings.Join(*v, ",") }
func (v *valueFiles) Set(s string) error { *v = append(*v, s); return nil }

// files is .Files: the chart's non-template files.
type files map[string][]byte

func (f files) Get(name string) string { return string(f[name]) }

type apiVersions []string

func (a apiVersions) Has(v string) bool {
	for _, x := range a {
		if x == v {
			return true
		}
	}
	return false
}

func readYAML(path string) (map[string]interface{}, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &out); err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	return out, nil
}

// merge overlays src on dst as helm does for -f files: maps merge key by
// key, anything else replaces; a null deletes the key.
func merge(dst, src map[string]interface{}) map[string]interface{} {
	for k, v := range src {
		if v == nil {
			delete(dst, k)
			continue
		}
		if sm, ok := v.(map[string]interface{}); ok {
			if dm, ok := dst[k].(map[string]interface{}); ok {
				dst[k] = merge(dm, sm)
				continue
			}
		}
		dst[k] = v
	}
	return dst
}

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func main() {
	var values valueFiles
	flag.Var(&values, "f", "values file (repeatable, later wins)")
	namespace := flag.String("namespace", "default", "release namespace")
	release := flag.String("release", "mx", "release name")
	notes := flag.Bool("notes", false, "print NOTES.txt instead of the manifests")
	apis := flag.String("api-versions", "", "comma-separated extra API versions (Capabilities.APIVersions)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: render [-f values.yaml]... [-namespace NS] [-release NAME] [-notes] CHART_DIR")
		os.Exit(64)
	}
	if err := run(flag.Arg(0), values, *namespace, *release, *notes, *apis); err != nil {
		fmt.Fprintln(os.Stderr, "render:", err)
		os.Exit(1)
	}
}

func run(dir string, valuePaths []string, namespace, release string, notes bool, apis string) error {
	chart, err := readYAML(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return err
	}
	vals, err := readYAML(filepath.Join(dir, "values.yaml"))
	if err != nil {
		return err
	}
	for _, p := range valuePaths {
		over, err := readYAML(p)
		if err != nil {
			return err
		}
		vals = merge(vals, over)
	}
	chartFiles := files{}
	var templates []string
	err = filepath.Walk(dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.HasPrefix(rel, "templates/") {
			templates = append(templates, rel)
		} else {
			chartFiles[rel] = data
		}
		return nil
	})
	if err != nil {
		return err
	}
	sort.Strings(templates)

	name, _ := chart["name"].(string)
	top := map[string]interface{}{
		"Values": vals,
		"Release": map[string]interface{}{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": map[string]interface{}{
			"Name": name, "Version": chart["version"], "AppVersion": chart["appVersion"],
		},
		"Capabilities": map[string]interface{}{
			"KubeVersion": map[string]interface{}{"Version": "v1.29.0", "Major": "1", "Minor": "29", "GitVersion": "v1.29.0"},
			"APIVersions": apiVersions(append([]string{"v1", "apps/v1", "policy/v1", "autoscaling/v2", "networking.k8s.io/v1"},
				strings.FieldsFunc(apis, func(r rune) bool { return r == ',' })...)),
		},
		"Files": chartFiles,
	}

	root := template.New(name)
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env") // as in helm: templates do not read the renderer's environment
	delete(funcs, "expandenv")
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = func(s string) map[string]interface{} {
		m := map[string]interface{}{}
		if err := yaml.Unmarshal([]byte(s), &m); err != nil {
			m["Error"] = err.Error()
		}
		return m
	}
	funcs["required"] = func(msg string, v interface{}) (interface{}, error) {
		if v == nil {
			return v, fmt.Errorf(msg)
		}
		if s, ok := v.(string); ok && s == "" {
			return v, fmt.Errorf(msg)
		}
		if l, ok := v.([]interface{}); ok && len(l) == 0 {
			return v, fmt.Errorf(msg)
		}
		return v, nil
	}
	funcs["fail"] = func(msg string) (string, error) { return "", fmt.Errorf(msg) }
	funcs["lookup"] = func(string, string, string, string) map[string]interface{} { return map[string]interface{}{} }
	funcs["include"] = func(string, interface{}) (string, error) { return "", nil }
	funcs["tpl"] = func(string, interface{}) (string, error) { return "", nil }
	root.Funcs(funcs)
	// include and tpl need the template set itself.
	root.Funcs(template.FuncMap{
		"include": func(n string, data interface{}) (string, error) {
			var buf bytes.Buffer
			if err := root.ExecuteTemplate(&buf, n, data); err != nil {
				return "", err
			}
			return buf.String(), nil
		},
		"tpl": func(text string, data interface{}) (string, error) {
			t, err := root.Clone()
			if err != nil {
				return "", err
			}
			t, err = t.New("tpl").Parse(text)
			if err != nil {
				return "", err
			}
			var buf bytes.Buffer
			err = t.Execute(&buf, data)
			return buf.String(), err
		},
	})
	root.Option("missingkey=zero")
	for _, rel := range templates {
		data, _ := os.ReadFile(filepath.Join(dir, rel))
		if _, err := root.New(name + "/" + rel).Parse(string(data)); err != nil {
			return err
		}
	}

	var out bytes.Buffer
	for _, rel := range templates {
		base := filepath.Base(rel)
		isNotes := base == "NOTES.txt"
		if strings.HasPrefix(base, "_") || isNotes != notes {
			continue
		}
		tname := name + "/" + rel
		top["Template"] = map[string]interface{}{"Name": tname, "BasePath": name + "/templates"}
		var buf bytes.Buffer
		if err := root.ExecuteTemplate(&buf, tname, top); err != nil {
			return err
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if notes {
			out.WriteString(text)
			continue
		}
		for _, doc := range strings.Split("\n"+text, "\n---") {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", tname, strings.Trim(doc, "\n"))
		}
	}
	_, err = os.Stdout.Write(out.Bytes())
	return err
}

// stripComments drops comment-only lines, to tell an empty document.
func stripComments(doc string) string {
	var keep []string
	for _, l := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
