// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {DatanetRegistry} from "./DatanetRegistry.sol";

/// @title AdapterRegistry: LoRA adapters by IPFS CID, with their author, base model, price and training Datanets.
/// @notice An adapter's on-chain id is keccak256 of its CID string (CIDv1 base32, UTF-8), the same `bytes32`
///         that EIP-712 requests carry. The Datanets it was trained from carry weights in basis points that sum to
///         10,000; they are fixed at registration. The author can change the price and retire the adapter.
///         An adapter trained by the Model Factory also carries its lineage (`registerWithLineage`): for each of its
///         Datanets the published version it was trained on, the CID of its training manifest and the CID of the
///         base weights, so that anyone can fetch them and retrain it (`factory verify`). Outside adapters
///         (`register`) have none: their `datanetVersions` is empty and both CIDs are "".
contract AdapterRegistry {
    uint256 public constant MAX_DATANETS = 16;
    uint16 public constant BPS = 10_000;

    struct Adapter {
        address author;
        bool retired;
        uint64 registeredAt;
        uint256 pricePerToken;
        string cid;
        string baseModel;
        uint256[] datanetIds;
        uint16[] weightsBps;
        // Lineage (appended last so that positional readers of the fields above keep working). Empty without one.
        uint256[] datanetVersions; // datanetVersions[i] is the version of datanetIds[i] the adapter was trained on
        string manifestCid; // the training manifest (hyper-parameters, seed, Datanet version and base CIDs, ...)
        string baseWeightsCid; // the base model's weights directory
    }

    /// @notice What `registerWithLineage` adds to `register`'s arguments.
    struct Lineage {
        uint256[] datanetVersions; // one per datanetId, each a version the Datanet has published (1-based)
        string manifestCid;
        string baseWeightsCid;
    }

    DatanetRegistry public immutable datanets;
    mapping(bytes32 => Adapter) private _adapters;
    uint256 public adapterCount;

    event AdapterRegistered(
        bytes32 indexed adapterId,
        address indexed author,
        string cid,
        string baseModel,
        uint256 pricePerToken,
        uint256[] datanetIds,
        uint16[] weightsBps
    );
    event AdapterLineage(
        bytes32 indexed adapterId,
        uint256[] datanetIds,
        uint256[] datanetVersions,
        string manifestCid,
        string baseWeightsCid
    );
    event AdapterPriceUpdated(bytes32 indexed adapterId, uint256 oldPrice, uint256 newPrice);
    event AdapterRetired(bytes32 indexed adapterId);

    error EmptyCid();
    error EmptyBaseModel();
    error AlreadyRegistered(bytes32 adapterId);
    error UnknownAdapter(bytes32 adapterId);
    error NotAuthor(bytes32 adapterId, address caller);
    error AdapterIsRetired(bytes32 adapterId);
    error LengthMismatch(uint256 datanets, uint256 weights);
    error TooManyDatanets(uint256 count);
    error DatanetsNotSorted(uint256 index);
    error UnknownDatanet(uint256 datanetId);
    error ZeroWeight(uint256 index);
    error WeightsDoNotSum(uint256 sum);
    error VersionsLengthMismatch(uint256 datanets, uint256 versions);
    error UnknownDatanetVersion(uint256 datanetId, uint256 version);
    error EmptyManifestCid();
    error EmptyBaseWeightsCid();

    constructor(DatanetRegistry datanets_) {
        datanets = datanets_;
    }

    /// @notice The on-chain id of an adapter CID.
    function adapterIdOf(string calldata cid) public pure returns (bytes32) {
        return keccak256(bytes(cid));
    }

    /// @notice Register an adapter; the caller is its author. `datanetIds` strictly increasing, each weight > 0,
    ///         weights sum to exactly 10,000 bps (an adapter with no Datanets is not allowed). No lineage.
    function register(
        string calldata cid,
        string calldata baseModel,
        uint256 pricePerToken,
        uint256[] calldata datanetIds,
        uint16[] calldata weightsBps
    ) external returns (bytes32 adapterId) {
        (adapterId,) = _register(cid, baseModel, pricePerToken, datanetIds, weightsBps);
    }

    /// @notice Register an adapter with its lineage: what `register` checks, plus one published version per
    ///         Datanet (1 <= version <= DatanetRegistry.versionCount), a non-empty manifest CID and base weights CID.
    ///         Emits AdapterRegistered then AdapterLineage.
    function registerWithLineage(
        string calldata cid,
        string calldata baseModel,
        uint256 pricePerToken,
        uint256[] calldata datanetIds,
        uint16[] calldata weightsBps,
        Lineage calldata lineage
    ) external returns (bytes32 adapterId) {
        uint256[] calldata versions = lineage.datanetVersions;
        if (versions.length != datanetIds.length) revert VersionsLengthMismatch(datanetIds.length, versions.length);
        if (bytes(lineage.manifestCid).length == 0) revert EmptyManifestCid();
        if (bytes(lineage.baseWeightsCid).length == 0) revert EmptyBaseWeightsCid();
        Adapter storage a;
        (adapterId, a) = _register(cid, baseModel, pricePerToken, datanetIds, weightsBps);
        for (uint256 i; i < versions.length; ++i) {
            // datanetIds[i] exists (checked by _register), so versionCount does not revert
            if (versions[i] == 0 || versions[i] > datanets.versionCount(datanetIds[i])) {
                revert UnknownDatanetVersion(datanetIds[i], versions[i]);
            }
        }
        a.datanetVersions = versions;
        a.manifestCid = lineage.manifestCid;
        a.baseWeightsCid = lineage.baseWeightsCid;
        emit AdapterLineage(adapterId, datanetIds, versions, lineage.manifestCid, lineage.baseWeightsCid);
    }

    function _register(
        string calldata cid,
        string calldata baseModel,
        uint256 pricePerToken,
        uint256[] calldata datanetIds,
        uint16[] calldata weightsBps
    ) private returns (bytes32 adapterId, Adapter storage a) {
        if (bytes(cid).length == 0) revert EmptyCid();
        if (bytes(baseModel).length == 0) revert EmptyBaseModel();
        if (datanetIds.length != weightsBps.length) revert LengthMismatch(datanetIds.length, weightsBps.length);
        if (datanetIds.length > MAX_DATANETS) revert TooManyDatanets(datanetIds.length);
        uint256 sum;
        for (uint256 i; i < datanetIds.length; ++i) {
            if (i > 0 && datanetIds[i] <= datanetIds[i - 1]) revert DatanetsNotSorted(i);
            if (!datanets.exists(datanetIds[i])) revert UnknownDatanet(datanetIds[i]);
            if (weightsBps[i] == 0) revert ZeroWeight(i);
            sum += weightsBps[i];
        }
        if (sum != BPS) revert WeightsDoNotSum(sum);
        adapterId = keccak256(bytes(cid));
        a = _adapters[adapterId];
        if (a.author != address(0)) revert AlreadyRegistered(adapterId);
        a.author = msg.sender;
        a.registeredAt = uint64(block.timestamp);
        a.pricePerToken = pricePerToken;
        a.cid = cid;
        a.baseModel = baseModel;
        a.datanetIds = datanetIds;
        a.weightsBps = weightsBps;
        ++adapterCount;
        emit AdapterRegistered(adapterId, msg.sender, cid, baseModel, pricePerToken, datanetIds, weightsBps);
    }

    /// @notice Change the price of an adapter (author only, not once retired).
    function updatePrice(bytes32 adapterId, uint256 newPrice) external {
        Adapter storage a = _owned(adapterId);
        if (a.retired) revert AdapterIsRetired(adapterId);
        emit AdapterPriceUpdated(adapterId, a.pricePerToken, newPrice);
        a.pricePerToken = newPrice;
    }

    /// @notice Retire an adapter for good (author only): nodes stop serving it; its record stays readable.
    function retire(bytes32 adapterId) external {
        Adapter storage a = _owned(adapterId);
        if (a.retired) revert AdapterIsRetired(adapterId);
        a.retired = true;
        emit AdapterRetired(adapterId);
    }

    function getAdapter(bytes32 adapterId) external view returns (Adapter memory) {
        Adapter storage a = _adapters[adapterId];
        if (a.author == address(0)) revert UnknownAdapter(adapterId);
        return a;
    }

    /// @notice Whether an adapter was registered with its lineage (`registerWithLineage`).
    function hasLineage(bytes32 adapterId) external view returns (bool) {
        Adapter storage a = _adapters[adapterId];
        if (a.author == address(0)) revert UnknownAdapter(adapterId);
        return bytes(a.manifestCid).length != 0;
    }

    function isActive(bytes32 adapterId) external view returns (bool) {
        Adapter storage a = _adapters[adapterId];
        return a.author != address(0) && !a.retired;
    }

    function _owned(bytes32 adapterId) private view returns (Adapter storage a) {
        a = _adapters[adapterId];
        if (a.author == address(0)) revert UnknownAdapter(adapterId);
        if (a.author != msg.sender) revert NotAuthor(adapterId, msg.sender);
    }
}
