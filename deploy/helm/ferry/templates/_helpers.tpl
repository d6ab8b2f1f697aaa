{{/* Release-scoped name prefix, at most 40 characters so suffixes such as "-connector-NAME-data" stay under 63. */}}
{{- define "ferry.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferry.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The image of one part: (dict "root" $ "part" "connector"). */}}
{{- define "ferry.image" -}}
{{- printf "%sferry-%s:%s" .root.Values.image.registry .part (default .root.Chart.AppVersion .root.Values.image.tag) -}}
{{- end -}}

{{/* The images run as user 10001 (deploy/container); fsGroup lets that user write the claims. */}}
{{- define "ferry.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "ferry.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/*
The Kubernetes name of a daemon: its Ferry name (1-63 letters, digits, '.', '_', '-', as the controller allows) when that
is already a short DNS label, otherwise a lower-cased form with a hash of the real name, so two names never collide.
*/}}
{{- define "ferry.daemonKey" -}}
{{- $n := toString .name -}}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$" $n) -}}
{{- fail (printf "%s name %q is not valid: use the name given at provisioning (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)" .kind $n) -}}
{{- end -}}
{{- if regexMatch "^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$" $n -}}
{{- $n -}}
{{- else -}}
{{- printf "%s-%s" (regexReplaceAll "-+$" (regexReplaceAll "[^a-z0-9-]" (lower $n) "-" | trunc 22) "") (sha256sum $n | trunc 8) -}}
{{- end -}}
{{- end -}}

{{/*
The first start copies the provisioned tokens from the read-only Secret into the claim, where the daemon rotates them;
later starts keep the rotated file, since the Secret's refresh token is spent after the first rotation.
*/}}
{{- define "ferry.seedTokens" -}}
- name: seed-tokens
  image: {{ include "ferry.image" (dict "root" .root "part" .part) }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["/bin/sh", "-c", "test -e /var/lib/ferry/tokens.json || install -m 0600 /etc/ferry/token/tokens.json /var/lib/ferry/tokens.json"]
  securityContext:
    {{- include "ferry.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - name: data
      mountPath: /var/lib/ferry
    - name: token
      mountPath: /etc/ferry/token
      readOnly: true
{{- end -}}
