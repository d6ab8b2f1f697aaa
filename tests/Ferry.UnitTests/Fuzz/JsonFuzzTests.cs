using System.Collections;
using System.Reflection;
using System.Text;
using System.Text.Json;
using Ferry.Controller.Api;
using Ferry.Core.Api;
using Ferry.Core.ControlPlane;
using Ferry.Core.Model;
using Ferry.Paths.Ice;

namespace Ferry.UnitTests.Fuzz;

/// <summary>
/// JSON from the network: session messages (every WebSocket text frame a controller or daemon receives) and admin API request
/// bodies (bound the way ASP.NET Core minimal APIs bind them: System.Text.Json with web defaults).
/// </summary>
public sealed class JsonFuzzTests
{
    [Fact]
    public void Session_messages_deserialize_to_null_or_to_a_message_with_every_required_member()
    {
        byte[][] seeds = [.. Fuzzer.Corpus("session-message")];
        var seed = Fuzzer.Seed(0x5E550001);
        var types = new HashSet<string>(StringComparer.Ordinal);
        var result = Fuzzer.Run("session-message", seed, Fuzzer.Iterations(5_000), seeds, bytes =>
        {
            var message = SessionMessage.Deserialize(bytes);
            if (message is null)
            {
                return false;
            }
            // What the daemons do first with signaling must cope with whatever deserialized.
            if (message is CandidatesMessage candidates)
            {
                _ = IceCredentials.FromPeer(candidates.Ufrag, candidates.Password);
                foreach (var info in candidates.Candidates)
                {
                    Candidate.TryParse(info, out _);
                }
            }
            // The checks below copy the message several times over; that is the test's cost, not the parser's.
            Fuzzer.Unmeasured(() =>
            {
                types.Add(message.GetType().Name);
                var missing = NullMembers(message, "message");
                Assert.True(missing.Count == 0, $"{message.GetType().Name} from {Encoding.UTF8.GetString(bytes)} has null where its type says never: {string.Join(", ", missing)}");
                // Round trip: what deserialized serializes to JSON that deserializes to the same JSON.
                var json = SessionMessage.Serialize(message);
                var again = SessionMessage.Deserialize(Encoding.UTF8.GetBytes(json));
                Assert.NotNull(again);
                Assert.Equal(json, SessionMessage.Serialize(again));
            });
            return true;
        }, JsonMutator.Next);
        Fuzzer.Log($"accepted message types: {types.Count} ({string.Join(", ", types.Order(StringComparer.Ordinal))})");
        Assert.True(types.Count >= 15, "the mutator should keep most message types reachable");
        Assert.True(result.Accepted > result.Iterations / 20, "the JSON-aware mutations should keep a fair share of messages valid");
    }

    [Fact]
    public void Every_session_message_type_round_trips()
    {
        foreach (var message in CorpusWriter.SessionMessageSamples())
        {
            var json = SessionMessage.Serialize(message);
            var back = SessionMessage.Deserialize(Encoding.UTF8.GetBytes(json));
            Assert.NotNull(back);
            Assert.Equal(message.GetType(), back.GetType());
            Assert.Equal(json, SessionMessage.Serialize(back));
        }
    }

    [Theory]
    [InlineData("""{"type":"connector-status","clients":3,"flows":7}""")]
    [InlineData("""{"type":"connector-status","clients":3,"flows":7,"resources":null}""")]
    [InlineData("""{"type":"relays","relays":[null]}""")]
    [InlineData("""{"type":"candidates","peer":"device/dv_1","ufrag":"abcd","password":"abcdefghijklmnopqrstuvwx","candidates":[{"kind":"host","priority":1}]}""")]
    [InlineData("""{"type":"path-report","paths":[{"connector":"connector/cn_1","kind":"direct","rttMs":1e400,"bytesSent":0,"bytesReceived":0,"migrations":0}]}""")]
    [InlineData("""{"type":"relay-status","tcpEndpoints":[],"stunEndpoints":[],"peers":0,"bytesIn":0,"bytesOut":0,"packetsIn":0,"packetsOut":0,"packetsPerSecond":-1e999,"refused":0}""")]
    public void Messages_missing_what_their_type_requires_are_refused(string json)
        => Assert.Null(SessionMessage.Deserialize(Encoding.UTF8.GetBytes(json)));

    [Fact]
    public void Members_that_may_be_null_may_also_be_absent()
    {
        // What peers send: null members are left out when written (WhenWritingNull), and older peers know fewer members.
        var hello = Assert.IsType<HelloMessage>(SessionMessage.Deserialize("""{"type":"hello","hostname":"h","privateIps":[],"version":"0.1.0","probeSeq":1,"controllerTimeMs":1,"daemonTimeMs":2}"""u8));
        Assert.Null(hello.CsrPem);
        var access = Assert.IsType<AccessMessage>(SessionMessage.Deserialize("""{"type":"access","resources":[],"grants":[]}"""u8));
        Assert.Null(access.RevokedDevices);
        var report = Assert.IsType<PathReportMessage>(SessionMessage.Deserialize("""{"type":"path-report","paths":[{"connector":"connector/cn_1","kind":"relayed","bytesSent":0,"bytesReceived":0,"migrations":0}]}"""u8));
        Assert.Null(report.Paths[0].RttMs);
        Assert.IsType<ResourcesMessage>(SessionMessage.Deserialize("""{"type":"resources","resources":[{"id":"rs_1","name":"db","network":"nw_1","address":"db","tcp":"all","udp":"none"}]}"""u8));
    }

    public static TheoryData<string> AdminBodies => new(Directory.GetFiles(Path.Combine(AppContext.BaseDirectory, "Corpus", "admin-api")).Select(Path.GetFileName).OfType<string>().Order(StringComparer.Ordinal));

    [Theory]
    [MemberData(nameof(AdminBodies))]
    public void Admin_bodies_bind_or_fail_with_a_json_error_and_validation_refuses_with_an_api_error(string file)
    {
        var type = AdminTypes[file];
        var seedInput = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Corpus", "admin-api", file));
        var seed = Fuzzer.Seed(0x2D710001) ^ file.Length;
        Fuzzer.Run($"admin-api {file}", seed, Fuzzer.Iterations(20_000) / AdminTypes.Count, [seedInput], bytes =>
        {
            object? request;
            try
            {
                request = JsonSerializer.Deserialize(bytes, type, Web);
            }
            catch (JsonException)
            {
                return false;
            }
            if (request is null)
            {
                return false;
            }
            try
            {
                Validate(request);
            }
            catch (ApiException e)
            {
                Assert.Equal(400, e.Status);
                return false;
            }
            return true;
        }, JsonMutator.Next);
    }

    private static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);

    private static readonly Dictionary<string, Type> AdminTypes = new(StringComparer.Ordinal)
    {
        ["client-login.json"] = typeof(ClientLoginRequest),
        ["connector-provision.json"] = typeof(ConnectorProvisionRequest),
        ["group-create.json"] = typeof(GroupCreateRequest),
        ["group-member.json"] = typeof(GroupMemberRequest),
        ["network-create.json"] = typeof(NetworkCreateRequest),
        ["network-update.json"] = typeof(NetworkUpdateRequest),
        ["operator-create.json"] = typeof(OperatorCreateRequest),
        ["policy-grant.json"] = typeof(PolicyGrantRequest),
        ["relay-provision.json"] = typeof(RelayProvisionRequest),
        ["resource-create.json"] = typeof(ResourceCreateRequest),
        ["resource-update.json"] = typeof(ResourceUpdateRequest),
        ["service-account.json"] = typeof(ServiceAccountCreateRequest),
        ["token-refresh.json"] = typeof(TokenRefreshRequest),
        ["user-create.json"] = typeof(UserCreateRequest),
        ["user-update.json"] = typeof(UserUpdateRequest),
    };

    /// <summary>The checks the endpoints run on a body before they touch the store, in the order they run them.</summary>
    private static void Validate(object request)
    {
        switch (request)
        {
            case NetworkCreateRequest r:
                AdminEndpoints.RequireName(r.Name, "network");
                _ = r.DnsServer is { Length: > 0 } dns && System.Net.IPEndPoint.TryParse(dns, out _);
                break;
            case NetworkUpdateRequest r:
                _ = r.DnsServer is { Length: > 0 } d && System.Net.IPEndPoint.TryParse(d, out _);
                break;
            case ConnectorProvisionRequest r:
                _ = r.Name is { Length: > 0 } ? AdminEndpoints.RequireName(r.Name, "connector") : null;
                AdminEndpoints.ValidateLocation(r.Location);
                break;
            case RelayProvisionRequest r:
                _ = r.Name is { Length: > 0 } ? AdminEndpoints.RequireName(r.Name, "relay") : null;
                AdminEndpoints.ValidateLocation(r.Location);
                break;
            case ResourceCreateRequest r:
                ResourceAddress.TryParse(r.Address, out _, out _);
                PortSet.TryParse(r.Tcp, out _, out _);
                PortSet.TryParse(r.Udp, out _, out _);
                _ = r.Name is { Length: > 0 } ? AdminEndpoints.RequireName(r.Name, "resource") : null;
                break;
            case ResourceUpdateRequest r:
                ResourceAddress.TryParse(r.Address, out _, out _);
                PortSet.TryParse(r.Tcp, out _, out _);
                PortSet.TryParse(r.Udp, out _, out _);
                _ = r.Name is { Length: > 0 } ? AdminEndpoints.RequireName(r.Name, "resource") : null;
                break;
            case OperatorCreateRequest r:
                AdminEndpoints.RequireName(r.Name, "operator");
                break;
            case UserCreateRequest r:
                AdminEndpoints.RequireName(r.Name, "user");
                break;
            case GroupCreateRequest r:
                AdminEndpoints.RequireName(r.Name, "group");
                break;
            case ServiceAccountCreateRequest r:
                AdminEndpoints.RequireName(r.Name, "service account");
                break;
            case ClientLoginRequest r:
                _ = string.IsNullOrWhiteSpace(r.DeviceName) ? "device" : r.DeviceName[..Math.Min(r.DeviceName.Length, 63)];
                break;
        }
    }

    /// <summary>Members the message's types declare non-nullable that hold null, found by walking the whole object graph.</summary>
    private static List<string> NullMembers(object value, string path)
    {
        var missing = new List<string>();
        Walk(value, path, missing, new NullabilityInfoContext());
        return missing;
    }

    private static void Walk(object value, string path, List<string> missing, NullabilityInfoContext context)
    {
        if (value is string || value.GetType().IsPrimitive || value is DateTimeOffset || value.GetType().IsEnum)
        {
            return;
        }
        if (value is IEnumerable items)
        {
            var i = 0;
            foreach (var item in items)
            {
                if (item is not null)
                {
                    Walk(item, $"{path}[{i}]", missing, context);
                }
                i++;
            }
            return;
        }
        foreach (var property in value.GetType().GetProperties(BindingFlags.Public | BindingFlags.Instance))
        {
            if (property.GetIndexParameters().Length > 0 || property.PropertyType.IsValueType || property.Name == "EqualityContract")
            {
                continue;
            }
            var nullability = context.Create(property);
            var member = property.GetValue(value);
            if (member is null)
            {
                if (nullability.ReadState == NullabilityState.NotNull)
                {
                    missing.Add($"{path}.{property.Name}");
                }
                continue;
            }
            if (member is IEnumerable list and not string && nullability.ElementType?.ReadState == NullabilityState.NotNull)
            {
                var i = 0;
                foreach (var item in list)
                {
                    if (item is null)
                    {
                        missing.Add($"{path}.{property.Name}[{i}]");
                    }
                    i++;
                }
            }
            Walk(member, $"{path}.{property.Name}", missing, context);
        }
    }
}
